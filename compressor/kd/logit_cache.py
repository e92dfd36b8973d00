"""An offline cache of sparse teacher logits (ALGORITHMS §7.7): written once, reused across students and runs.

Layout: `<root>/<key>/index.json` plus safetensors shards holding, per block and predicted position, the kept
token ids (int32) and their weights (fp16). The key and the index carry the teacher's fingerprint and the
data's fingerprint; opening a cache built from another teacher or other data is refused, because its targets
would silently teach the wrong distribution.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.errors import UserError
from compressor.fs import atomic_directory
from compressor.kd.sparse import random_sampling_targets, top_k_targets

FORMAT = 1
OWNER = "logit cache"  # the marker that lets a rebuild replace the folder (fs.atomic_directory)


def cache_key(teacher_fingerprint: str, data_fingerprint: str, method: str, size: int, seq_len: int) -> str:
    raw = json.dumps([FORMAT, teacher_fingerprint, data_fingerprint, method, size, seq_len])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


@dataclass
class SparseLogitCache:
    folder: Path
    index: dict
    ids: torch.Tensor  # [N, T-1, K] int32, -1 where unused
    weights: torch.Tensor  # [N, T-1, K] float16

    @classmethod
    def open(cls, folder: Path, teacher_fingerprint: str, data_fingerprint: str) -> SparseLogitCache:
        """Load a cache, refusing one built from another teacher or other data."""
        from safetensors.torch import load_file

        index_file = folder / "index.json"
        if not index_file.exists():
            raise UserError(f"{folder}: not a logit cache (no index.json)")
        index = json.loads(index_file.read_text())
        if index.get("teacher") != teacher_fingerprint:
            raise UserError(
                f"{folder}: logit cache was built from another teacher "
                f"({index.get('teacher', '?')[:12]}…, this run's is {teacher_fingerprint[:12]}…); refusing it"
            )
        if index.get("data") != data_fingerprint:
            raise UserError(
                f"{folder}: logit cache was built from other data "
                f"({index.get('data', '?')[:12]}…, this run's is {data_fingerprint[:12]}…); refusing it"
            )
        ids, weights = [], []
        for shard in index["shards"]:
            path = folder / shard["file"]
            if hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
                raise UserError(f"{path}: logit cache shard is corrupt (checksum mismatch); delete {folder}")
            tensors = load_file(path)
            ids.append(tensors["ids"])
            weights.append(tensors["weights"])
        width = max(t.shape[-1] for t in ids)
        ids = [torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=-1) for t in ids]
        weights = [torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in weights]
        return cls(folder, index, torch.cat(ids), torch.cat(weights))

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        folder: Path,
        teacher,
        blocks: torch.Tensor,
        teacher_fingerprint: str,
        data_fingerprint: str,
        method: str = "rs",
        size: int = 50,
        batch_size: int = 16,
        shard_blocks: int = 1024,
        seed: int = 0,
        progress=None,
    ) -> SparseLogitCache:
        """Run the teacher once over `blocks` [N, T] and store sparse targets for every predicted position."""
        from safetensors.torch import save_file

        device = next(teacher.parameters()).device
        generator = torch.Generator(device="cpu")
        shards = []
        with atomic_directory(folder, owner=OWNER) as tmp:
            for shard_start in range(0, len(blocks), shard_blocks):
                generator.manual_seed(seed * 1_000_003 + shard_start)  # fixed per shard: reproducible
                shard = blocks[shard_start : shard_start + shard_blocks]
                ids_parts, weight_parts = [], []
                for start in range(0, len(shard), batch_size):
                    ids = shard[start : start + batch_size].to(device)
                    logits = teacher(input_ids=ids).logits[:, :-1].float().cpu()
                    flat = logits.reshape(-1, logits.shape[-1])
                    if method == "rs":
                        kept, weights = random_sampling_targets(flat, size, generator=generator)
                    else:
                        kept, weights = top_k_targets(flat, size)
                    ids_parts.append(kept.view(*logits.shape[:2], -1))
                    weight_parts.append(weights.view(*logits.shape[:2], -1))
                    if progress:
                        progress(len(ids))
                kept, weights = torch.cat(ids_parts), torch.cat(weight_parts)
                width = int((kept >= 0).sum(-1).max())  # unique tokens never exceed the draws: trim the rest
                name = f"shard-{len(shards):05d}.safetensors"
                save_file(
                    {
                        "ids": kept[..., :width].to(torch.int32).contiguous(),
                        "weights": weights[..., :width].to(torch.float16).contiguous(),
                    },
                    tmp / name,
                )
                shards.append(
                    {
                        "file": name,
                        "start": shard_start,
                        "count": len(shard),
                        "sha256": hashlib.sha256((tmp / name).read_bytes()).hexdigest(),
                    }
                )
            index = {
                "format": FORMAT,
                "teacher": teacher_fingerprint,
                "data": data_fingerprint,
                "method": method,
                "size": size,
                "blocks": len(blocks),
                "seq_len": int(blocks.shape[1]),
                "shards": shards,
            }
            (tmp / "index.json").write_text(json.dumps(index, indent=2))
        return cls.open(folder, teacher_fingerprint, data_fingerprint)

    def targets(self, block_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[block_indices].long(), self.weights[block_indices].float()
