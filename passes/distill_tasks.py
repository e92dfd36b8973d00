"""`distill` for encoders and task students: sentence encoders learn the teacher's embeddings (cosine + MSE,
ALGORITHMS §7.9), classifiers its class logits (KL with temperature + CE on gold or teacher labels + mapped
hidden states, TinyBERT style)."""

from __future__ import annotations

import torch

from compressor.data import encode_sentences, sentences
from compressor.errors import UserError
from compressor.evaluate import embedding_agreement, sentence_embeddings
from compressor.kd.classifier import NO_LABEL, ValidationScores, classifier_kd_loss, label_ids, mapped_hidden_loss
from compressor.kd.losses import encoder_kd_loss
from compressor.kd.train import IndexedBatches
from passes.base import PassContext
from passes.distill_config import DistillConfig


class TaskSetups:
    """Mixed into `Distill`: the data, loss and held-out evaluation of a classifier or an encoder student."""

    config: DistillConfig
    eval_count: int
    pairs: list[tuple[int, int]]
    name: str

    def classifier_setup(self, ctx: PassContext, teacher, shard: tuple[int, int] = (0, 1)):
        """Task students: KD on class logits + CE on gold (or teacher) labels + mapped hidden states."""
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        texts = list(corpus.train)
        config = teacher.config
        gold = label_ids(corpus.train_labels, config, corpus.name) or [NO_LABEL] * len(texts)
        if len(texts) < cfg.train.batch_size:
            raise UserError(
                f"{corpus.name}: only {len(texts)} training texts, fewer than train.batch_size {cfg.train.batch_size}"
            )
        tokenizer, pairs = ctx.tokenizer, self.pairs

        def batch(index):
            encoded = encode_sentences(tokenizer, [texts[i] for i in index], cfg.train.seq_len)
            return {**encoded, "labels": torch.tensor([gold[i] for i in index])}

        data = IndexedBatches(len(texts), cfg.train.batch_size, ctx.seed, batch, *shard)
        watched = list(corpus.validation)[: (cfg.train.eval_blocks or 64) * 8] if cfg.train.eval_every != 0 else None
        watched_labels = label_ids(corpus.validation_labels, config, corpus.valid_name)

        scores = ValidationScores(teacher, tokenizer, watched or [], watched_labels, cfg.train.seq_len)

        def evaluate(model):
            return scores(model, self.eval_count)

        def loss_fn(model, batch, step):
            labels = batch.pop("labels")
            hidden = cfg.loss.classifier_hidden_weight > 0
            with torch.no_grad():
                teacher_out = teacher(**batch, output_hidden_states=hidden)
            out = model(**batch, output_hidden_states=hidden)
            loss, parts = classifier_kd_loss(
                out.logits, teacher_out.logits, labels, cfg.loss.alpha, cfg.loss.classifier_temperature
            )
            if hidden:
                transfer = mapped_hidden_loss(
                    out.hidden_states, teacher_out.hidden_states, pairs, batch["attention_mask"]
                )
                loss = loss + cfg.loss.classifier_hidden_weight * transfer
                parts = {**parts, "hidden": float(transfer.detach())}
            return loss, parts

        return data, loss_fn, evaluate if watched else None

    def encoder_setup(self, ctx: PassContext, teacher, shard: tuple[int, int] = (0, 1)):
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        texts = sentences(corpus.train) or list(corpus.train)
        if len(texts) < cfg.train.batch_size:
            raise UserError(
                f"{corpus.name}: only {len(texts)} training sentences, "
                f"fewer than train.batch_size {cfg.train.batch_size}"
            )
        tokenizer = ctx.tokenizer
        data = IndexedBatches(
            len(texts),
            cfg.train.batch_size,
            ctx.seed,
            lambda index: encode_sentences(tokenizer, [texts[i] for i in index], cfg.train.seq_len),
            *shard,
        )
        watched = sentences(corpus.validation) or list(corpus.validation)
        held = watched[: (cfg.train.eval_blocks or 64) * 8] if cfg.train.eval_every != 0 else None

        teacher_embeddings: dict[int, torch.Tensor] = {}  # per evaluation size: the teacher runs once, not each time

        def evaluate(model):
            texts = held[: self.eval_count]
            if len(texts) not in teacher_embeddings:
                teacher_embeddings[len(texts)] = sentence_embeddings(teacher, tokenizer, texts, cfg.train.seq_len)
            cached = teacher_embeddings[len(texts)]
            return dict([embedding_agreement(model, teacher, tokenizer, texts, cfg.train.seq_len, cached)])

        def loss_fn(model, batch, step):
            with torch.no_grad():
                teacher_hidden = teacher(**batch, output_hidden_states=True).hidden_states[-1]
            student_hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            return encoder_kd_loss(
                student_hidden, teacher_hidden, batch["attention_mask"], cfg.loss.cosine_weight, cfg.loss.mse_weight
            )

        return data, loss_fn, evaluate if held else None
