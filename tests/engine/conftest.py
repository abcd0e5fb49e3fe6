"""Shared fixtures for engine tests."""

from __future__ import annotations

import pytest
import torch

from tests.engine._helpers import tiny_model


@pytest.fixture(scope="session")
def model():
    torch.set_num_threads(2)
    return tiny_model()


@pytest.fixture
def make_engine(model):
    from apr.engine import LocalEngine, LocalEngineConfig

    def make(**overrides):
        cfg = {"max_batch_size": 8, "max_seq_len": 128, **overrides}
        return LocalEngine(model, LocalEngineConfig(**cfg))

    return make
