"""The teacher-written corpus (§7.4 seq_kd): the cost estimate a plan is sized on, and the cache's refusals."""

import time

import pytest
import torch

from compressor.errors import UserError
from compressor.kd.seqkd import SamplingSettings, teacher_corpus, writing_seconds
from tests.helpers import FakeClock


class RecordingTeacher(torch.nn.Module):
    """Stands in for a causal LM: `generate` appends random tokens and records what it was asked for."""

    def __init__(self, clock=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int]] = []
        self.clock = clock

    def generate(self, input_ids, max_new_tokens, **_):
        self.calls.append((len(input_ids), max_new_tokens))
        if self.clock is not None:
            self.clock.now += 0.5 + 0.01 * max_new_tokens  # a fixed cost per call, then a cost per new token
        torch.rand(1)  # consumes the global RNG, as sampling does
        return torch.cat([input_ids, torch.randint(3, 50, (len(input_ids), max_new_tokens))], dim=1)


def test_the_writing_estimate_times_whole_sequences_of_a_full_batch_and_leaves_the_rng_alone(monkeypatch):
    """A short probe scaled up missed the call's fixed cost and the longer contexts' dearer tokens (20 % low)."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    teacher = RecordingTeacher(clock)
    settings = SamplingSettings(sequences=100, seq_len=40, prompt_tokens=8)
    prompts = torch.randint(3, 50, (5, 40))  # fewer rows than a batch: repeated to fill it
    before = torch.random.get_rng_state()
    seconds = writing_seconds(teacher, prompts, settings, pad_token_id=0, batch_size=16, repeats=2)
    assert seconds == pytest.approx((0.5 + 0.01 * 32) / 16)  # a whole call, fixed cost included, per sequence
    assert torch.equal(torch.random.get_rng_state(), before)
    assert teacher.calls[0] == (16, 2)  # the warm-up
    assert teacher.calls[1:] == [(16, 32), (16, 32)]  # seq_len − prompt_tokens new tokens, a full batch


def test_the_corpus_is_written_once_then_read_back_and_refused_for_another_teacher_or_other_data(tmp_path):
    teacher = RecordingTeacher()
    settings = SamplingSettings(sequences=10, seq_len=12, prompt_tokens=4)
    prompts = torch.randint(3, 50, (4, 12))
    blocks, cached = teacher_corpus(tmp_path / "c", teacher, prompts, settings, "t1", "d1", 0, batch_size=4)
    assert blocks.shape == (10, 12) and not cached
    assert torch.equal(blocks[:4, :4], prompts[:, :4])  # each row continues a data prompt
    again, cached = teacher_corpus(tmp_path / "c", teacher, prompts, settings, "t1", "d1", 0, batch_size=4)
    assert cached and torch.equal(again, blocks)
    with pytest.raises(UserError, match="another teacher"):
        teacher_corpus(tmp_path / "c", teacher, prompts, settings, "t2", "d1", 0)
    with pytest.raises(UserError, match="other data or settings"):
        teacher_corpus(tmp_path / "c", teacher, prompts, settings, "t1", "d2", 0)
