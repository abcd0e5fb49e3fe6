import os

# Before torch loads libgomp: on the shared 2-core machine, spinning OpenMP threads made a
# 2-step run 14x slower (45 s vs 3.3 s) when other processes held the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A small N=3 data set (SoS+ and APR traces, tokenizer) as `python -m apr.cli.data` writes it."""
    from apr.datagen.build import DataConfig, generate_dataset
    from apr.search import SearchConfig
    from apr.task import CountdownConfig
    from apr.tokenizer import TokenizerConfig

    out = tmp_path_factory.mktemp("sft_data")
    task = CountdownConfig(num_numbers=3, max_number=30)
    searches = {"sosp": SearchConfig("sosp"), "apr": SearchConfig("apr", promising_prob=0.9)}
    data = DataConfig(out_dir=str(out), num_train=48, num_val=12, num_test=0, num_workers=1, progress=False)
    generate_dataset(task, searches, data, TokenizerConfig())
    return out


@pytest.fixture(scope="session")
def data_tokenizer(data_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data_dir / "tokenizer")
