"""`prune_cut.loss_to_teacher`: the loss that ranks candidate shapes against each other (prune and search)."""

import torch

from compressor.ir import ModelIR
from passes.prune_cut import loss_to_teacher
from tests.helpers import minilm_dir, pass_context


class RotatedEncoder(torch.nn.Module):
    """The teacher's function with its last hidden states turned by an orthogonal matrix and scaled: the same
    sentence geometry in another basis, as a student of another width would express it."""

    def __init__(self, teacher: torch.nn.Module, rotation: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.teacher, self.rotation, self.scale = teacher, rotation, scale

    def forward(self, **inputs):
        out = self.teacher(**inputs)
        last = out.hidden_states[-1] @ self.rotation * self.scale
        return type(out)(hidden_states=(*out.hidden_states[:-1], last))


def test_an_encoder_in_another_basis_has_no_loss_and_a_different_model_has_some(tmp_path):
    ir = ModelIR.load(minilm_dir())
    ctx = pass_context(ir, tmp_path, corpus_file="stsb_train.csv")
    teacher = ir.materialize().eval()
    texts = list(ctx.corpus.validation)[:48]
    width = teacher.config.hidden_size
    rotation = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(0)))[0]
    turned = RotatedEncoder(teacher, rotation, 3.0)
    # the mean cosine to the teacher (the old equal-width measure) is far from 1 here; the shape loss is not fooled
    assert loss_to_teacher(teacher, turned, texts, ctx, 64) < 1e-6
    torch.manual_seed(0)
    other = type(teacher)(teacher.config).eval()  # random weights: another geometry altogether
    assert loss_to_teacher(teacher, other, texts, ctx, 64) > 0.1
