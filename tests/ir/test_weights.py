import pytest
import torch
from safetensors.torch import save_file

from compressor.errors import UserError
from compressor.ir.weights import WeightStore, check_safetensors_file, checkpoint_files


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        check_safetensors_file(path)


def test_garbage_header_is_detected(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UserError, match="not a valid safetensors"):
        check_safetensors_file(path)


def test_pickled_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="safetensors only"):
        checkpoint_files(tmp_path)


def test_lazy_store_reads_on_demand_and_updates_do_not_mutate(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.arange(4.0), "b": torch.zeros(2, 3)}, path)
    store = WeightStore.from_files([path])
    assert store.shape("b") == (2, 3) and set(store) == {"a", "b"}
    updated = store.with_updates({"a": torch.ones(4)})
    assert torch.equal(store["a"], torch.arange(4.0))
    assert torch.equal(updated["a"], torch.ones(4))
    assert set(updated.without(["b"])) == {"a"}
    assert set(store.renamed({"a": "c"})) == {"c", "b"}
    assert len(dict(store.items())) == 2  # iterating while lazily loading is safe
