"""One local Ray cluster per test module (started on first use, shut down after the module)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from apr.train.device import AUTO_ENV

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="apr-ray-")  # short: Ray's socket paths live under it
    env = {"PYTHONPATH": str(REPO)}  # workers import tests.rl._setup's reward
    if os.environ.get(AUTO_ENV):  # what `auto` resolves to, in the actors too
        env[AUTO_ENV] = os.environ[AUTO_ENV]
    ray.init(num_cpus=4, include_dashboard=False, logging_level="warning", _temp_dir=tmp,
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
