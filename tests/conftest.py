import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall shared cores

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from apr.tokenizer import build_tokenizer

    return build_tokenizer()
