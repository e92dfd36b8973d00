"""`lora_kd`: distillation through LoRA adapters, merged into the weights at the end (LLM-Neo, ALGORITHMS §6).

Only the adapters train (rank r, alpha = 2r by default, dropout 0, every linear layer but the LM head), with
any loss of `distill` (default (1−α)·CE + α·KL, α = 0.5) at a higher learning rate than full fine-tuning.
At the end W' = W + (alpha/r)·B·A (alpha/√r with rsLoRA) is merged through PEFT and the plain model goes back
into the IR, so the student stays a stock architecture.
"""

from __future__ import annotations

from pydantic import Field

from passes.base import PassConfig, register
from passes.distill import Distill
from passes.distill_config import DistillConfig


class LoraSettings(PassConfig):
    rank: int = Field(default=16, ge=1)
    alpha: float | None = Field(default=None, gt=0, description="default: 2 × rank")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field(default="all-linear", description="module names, or all-linear")
    use_rslora: bool = False


class LoraKDConfig(DistillConfig):
    """Every `distill` section, plus `lora`; `train.lr` defaults to 10× distill's (LoRA needs a higher rate)."""

    moved = {"lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout"}
    lora: LoraSettings = LoraSettings()


@register
class LoraKD(Distill):
    name = "lora_kd"
    Config = LoraKDConfig

    def run(self, ir, ctx):
        result = super().run(ir, ctx)
        ctx.metrics.update({"rank": self.config.lora.rank, "trainable_params": self.trainable_params})
        return result

    def default_lr(self, ir) -> float:
        """Adapters train from zero with few parameters: ten times the full fine-tuning rates of before."""
        return 1e-2 if ir.task == "causal-lm" else 2e-3

    def trainable(self, model):
        from peft import LoraConfig, get_peft_model

        lora: LoraSettings = self.config.lora
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha or 2 * lora.rank,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            use_rslora=lora.use_rslora,
            bias="none",
        )
        wrapped = get_peft_model(model, config)
        self.trainable_params = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        return wrapped

    def finished(self, model):
        return model.merge_and_unload()
