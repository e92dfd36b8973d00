import os
from pathlib import Path

import pytest

from tests.helpers import CONFIGS, make_tiny


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny saved model per supported model_type, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {model_type: make_tiny(model_type, root / model_type) for model_type in CONFIGS}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own pass cache, so no test sees another's results."""
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
