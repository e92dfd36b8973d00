"""Sequence-level KD (§7.4, "seq_kd"): a corpus the teacher writes from prompts drawn from the data, so a
small data set stops being the limit. Generated once and cached like the sparse logits: safetensors plus an
index carrying the teacher's and the data's fingerprints and the sampling settings; a mismatch is refused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compressor.errors import UserError
from compressor.fs import atomic_directory

OWNER = "teacher-generated corpus"  # marker: a regeneration may replace only such a folder


@dataclass(frozen=True)
class SamplingSettings:
    sequences: int
    seq_len: int
    prompt_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def key(self, teacher_fingerprint: str, data_fingerprint: str) -> str:
        raw = json.dumps([teacher_fingerprint, data_fingerprint, asdict(self)], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


@torch.no_grad()
def generate_corpus(
    teacher, prompts: torch.Tensor, settings: SamplingSettings, pad_token_id: int, batch_size: int = 32, progress=None
) -> torch.Tensor:
    """[sequences, seq_len] token ids: each row a data prompt continued by the teacher's sampling."""
    torch.manual_seed(settings.seed)
    device = next(teacher.parameters()).device
    rows = []
    new_tokens = settings.seq_len - settings.prompt_tokens
    for start in range(0, settings.sequences, batch_size):
        prompt = prompts[start : min(start + batch_size, settings.sequences), : settings.prompt_tokens].to(device)
        out = teacher.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad_token_id,
        )
        rows.append(out[:, : settings.seq_len].cpu())
        if progress:
            progress(len(prompt))
    return torch.cat(rows)


@torch.no_grad()
def writing_seconds(
    teacher,
    prompts: torch.Tensor,
    settings: SamplingSettings,
    pad_token_id: int,
    batch_size: int,
    repeats: int = 2,
) -> float:
    """Seconds to write one sequence, measured: after a warm-up call, a full batch writes a whole sequence's new
    tokens, as the writing will, and the median call is shared by the batch. A short probe scaled up came out about
    20 % under the real writing on stories260K: a call has a fixed cost (prefill, setup), and a new token costs more
    as the context grows (3.5 → 5.1 ms a token at batch 32 between contexts 16 and 128). It sizes a plan; it is an
    estimate, not a promise."""
    import statistics
    import time

    device = next(teacher.parameters()).device
    rows = prompts[:batch_size, : settings.prompt_tokens]
    if len(rows) < batch_size:
        rows = rows.repeat(-(-batch_size // len(rows)), 1)[:batch_size]
    rows = rows.to(device)
    state = torch.random.get_rng_state()

    def sample(tokens: int) -> float:
        started = time.perf_counter()
        teacher.generate(
            input_ids=rows,
            attention_mask=torch.ones_like(rows),
            do_sample=True,
            top_k=0,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=pad_token_id,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    sample(2)
    new_tokens = max(settings.seq_len - settings.prompt_tokens, 1)
    call = statistics.median(sample(new_tokens) for _ in range(repeats))
    torch.random.set_rng_state(state)
    return call / batch_size


def teacher_corpus(
    folder: Path,
    teacher,
    prompts: torch.Tensor,
    settings: SamplingSettings,
    teacher_fingerprint: str,
    data_fingerprint: str,
    pad_token_id: int,
    batch_size: int = 32,
    progress=None,
) -> tuple[torch.Tensor, bool]:
    """Open the cached corpus in `folder` (refusing another teacher's or other data's), or generate it once.

    Returns the token blocks and whether they came from the cache.
    """
    from safetensors.torch import load_file, save_file

    index_file = folder / "index.json"
    if index_file.exists():
        index = json.loads(index_file.read_text())
        if index["teacher"] != teacher_fingerprint:
            raise UserError(f"{folder}: teacher-generated corpus comes from another teacher; refusing it")
        if index["data"] != data_fingerprint or index["settings"] != asdict(settings):
            raise UserError(f"{folder}: teacher-generated corpus was made from other data or settings; refusing it")
        return load_file(folder / "corpus.safetensors")["ids"], True
    if len(prompts) < settings.sequences:
        repeats = -(-settings.sequences // len(prompts))
        prompts = prompts.repeat(repeats, 1)
    blocks = generate_corpus(teacher, prompts, settings, pad_token_id, batch_size, progress)
    with atomic_directory(folder, owner=OWNER) as tmp:
        save_file({"ids": blocks.contiguous()}, tmp / "corpus.safetensors")
        (tmp / "index.json").write_text(
            json.dumps(
                {"teacher": teacher_fingerprint, "data": data_fingerprint, "settings": asdict(settings)}, indent=2
            )
        )
    return blocks, False
