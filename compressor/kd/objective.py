"""The causal-LM distillation objective: (1−α)·CE + α·D(p_T ‖ q_S) for any divergence of §7, with the
stateful schedules (TAID's t, DTS's temperature) that advance once per optimizer step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from compressor.kd.divergences import ce_and_forward_kl, token_divergence
from compressor.kd.losses import IGNORE_INDEX, lm_cross_entropy
from compressor.kd.schedules import DTSState, TAIDState

LOSSES = ("fkl", "rkl", "skew_kl", "skew_rkl", "jsd", "tvd", "taid")


@dataclass
class LMObjective:
    loss: str = "fkl"
    alpha: float = 0.5
    temperature: float = 1.0
    skew_alpha: float = 0.1
    jsd_beta: float = 0.5
    chunk_size: int = 256
    taid: TAIDState | None = None
    dts: DTSState | None = None
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r} (known: {', '.join(LOSSES)})")
        if self.loss == "taid" and self.taid is None:
            self.taid = TAIDState()

    def params(self) -> dict[str, float]:
        if self.loss in ("skew_kl", "skew_rkl"):
            return {"alpha": self.skew_alpha}
        if self.loss == "jsd":
            return {"beta": self.jsd_beta}
        if self.loss == "taid":
            return {"t": self.taid.t}
        return {}

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor,
        step: int,
        total_steps: int,
        kd_only: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`kd_only` (student-generated sequences, §7.4): no CE, since the labels are the student's own samples."""
        mask = labels != IGNORE_INDEX
        temperature = self.dts.temperature if self.dts else self.temperature
        alpha = 1.0 if kd_only else self.alpha
        if self.loss == "fkl" and 0 < alpha < 1 and student_logits.shape[-1] == teacher_logits.shape[-1]:
            ce, kd = ce_and_forward_kl(student_logits, teacher_logits, labels, temperature, self.chunk_size)
            return self.finish(ce, kd, alpha, temperature, teacher_logits, labels, step, total_steps)
        kd = token_divergence(
            self.loss, student_logits, teacher_logits, mask, temperature, self.chunk_size, **self.params()
        )
        ce = lm_cross_entropy(student_logits, labels) if (alpha < 1 or self.dts) else kd.new_zeros(())
        return self.finish(ce, kd, alpha, temperature, teacher_logits, labels, step, total_steps)

    def finish(self, ce, kd, alpha, temperature, teacher_logits, labels, step, total_steps):
        """Mix the two terms and advance the schedules (TAID from the KD loss, DTS from the CE gap)."""
        loss = (1 - alpha) * ce + alpha * kd
        parts = {"ce": float(ce.detach()), "kd": float(kd.detach()), "temperature": temperature}
        if self.taid:
            parts["taid_t"] = self.taid.t
            self.taid.update(float(kd.detach()), step, total_steps)
        if self.dts:
            teacher_ce = float(lm_cross_entropy(teacher_logits.detach(), labels))
            self.dts.update(float(ce.detach()), teacher_ce, step / max(1, total_steps))
        return loss, parts

    def state_dict(self) -> dict:
        """What a checkpoint must hold to resume the schedules exactly."""
        return {"taid": asdict(self.taid) if self.taid else None, "dts": asdict(self.dts) if self.dts else None}

    def load_state_dict(self, state: dict) -> None:
        self.taid = TAIDState(**state["taid"]) if state.get("taid") else self.taid
        self.dts = DTSState(**state["dts"]) if state.get("dts") else self.dts
