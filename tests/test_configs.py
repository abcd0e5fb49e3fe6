"""Every config in conf/ composes and converts to the typed dataclasses."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from apr.cli.common import to_container
from apr.config import from_dict
from apr.datagen import DataConfig
from apr.search import SearchConfig
from apr.task import CountdownConfig
from apr.tokenizer import TokenizerConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF / "search").glob("*.yaml"))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("search", SEARCHES)
def test_data_config_composes(task, search):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose("data", overrides=[f"task={task}", f"search@solvers.sosp={search}"]))
    assert from_dict(CountdownConfig, c["task"], "task").name == task
    for name, s in c["solvers"].items():
        from_dict(SearchConfig, s, f"solvers.{name}")
    from_dict(DataConfig, c["data"], "data")
    from_dict(TokenizerConfig, c["tokenizer"], "tokenizer")


def test_every_yaml_field_is_commented():
    # house style (as verl enforces): a comment line directly above every field
    for path in CONF.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        in_hydra = False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if line and not line[0].isspace():
                in_hydra = stripped.startswith("hydra:") or stripped.startswith("defaults:")
            is_field = re.match(r"^\s*[A-Za-z_][\w@.]*:( |$)", line) and not stripped.endswith(":")
            if in_hydra or not is_field:
                continue
            assert i > 0 and lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1} {line!r} lacks a comment"


def test_eval_config_composes():
    from apr.eval import EvalConfig

    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose("eval", overrides=["models.apr=/tmp/x"]))
    assert c["models"] == {"sosp": None, "apr": "/tmp/x"}
    assert from_dict(EvalConfig, c["eval"], "eval").max_thread_tokens == 1024


@pytest.mark.parametrize("dist", ["none", "ray_local", "ray_cluster"])
@pytest.mark.parametrize("preset", [None, "paper", "n3_tiny", "n4_small"])
def test_rl_config_composes(dist, preset):
    from apr.rl.config import RLConfig

    overrides = ["init=/tmp/x", f"dist={dist}"] + ([f"+rl={preset}"] if preset else [])
    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose("rl", overrides=overrides))
    c.pop("hydra", None)
    cfg = from_dict(RLConfig, c, "")
    assert cfg.dist.mode == dist and cfg.init == "/tmp/x"
    if preset == "paper":
        assert (cfg.train.batch_problems, cfg.algo.group_size, cfg.optim.lr, cfg.train.steps) == (64, 5, 1e-5, 150)
        assert cfg.rollout.engine_options["max_seq_len"] == 4096
