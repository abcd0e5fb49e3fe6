"""Every config in conf/ composes and converts to the typed dataclasses."""

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from apr.cli.common import to_container
from apr.config import ConfigError, from_dict
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


DISTS = sorted(p.stem for p in (CONF / "dist").glob("*.yaml"))
RL_PRESETS = [None, *sorted(p.stem for p in (CONF / "rl").glob("*.yaml"))]


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("preset", RL_PRESETS)
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
        assert cfg.engine.max_seq_len == 4096  # null in conf/engine/local.yaml: the rollout window
    assert cfg.dist.placement.strategy is None  # no placement group unless asked for


def test_placement_config_is_checked():
    from apr.config import ConfigError
    from apr.rl.config import DistConfig

    d = from_dict(DistConfig, {"placement": {"strategy": "SPREAD"}, "ref_gpus": 0.5}, "dist")
    assert d.placement.strategy == "SPREAD" and d.placement.timeout_s > 0
    with pytest.raises(ConfigError, match="dist.placement.strategy"):
        from_dict(DistConfig, {"placement": {"strategy": "spread-out"}}, "dist")
    with pytest.raises(ConfigError, match="dist.worker_cpus/worker_gpus"):
        from_dict(DistConfig, {"placement": {"strategy": "PACK"}, "worker_cpus": 0, "worker_gpus": 0}, "dist")


# conf/experiment/paper_repro.yaml: each stage's overrides, composed into the entry point `make repro-paper`
# runs them with (see the Makefile)
REPRO = yaml.safe_load((CONF / "experiment" / "paper_repro.yaml").read_text())
STAGE_CONFIG = {"data": "data", "sft_sosp": "sft", "sft_apr": "sft", "rl_apr": "rl", "rl_sosp": "rl", "eval": "eval"}


def test_paper_repro_lists_every_stage_the_makefile_runs():
    makefile = (CONF.parent / "Makefile").read_text()
    ran = set(re.findall(r"\$\(call repro_args,(\w+)\)", makefile))
    assert ran == set(REPRO) == set(STAGE_CONFIG)


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIG))
def test_paper_repro_stage_composes(stage):
    from apr.cli.sft import load_config
    from apr.eval import EvalConfig
    from apr.rl.config import RLConfig

    name = STAGE_CONFIG[stage]
    overrides = REPRO[stage] + (["dist=ray_cluster"] if name == "rl" else [])
    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose(name, overrides=overrides))
    c.pop("hydra", None)
    if name == "data":
        assert from_dict(DataConfig, c["data"], "data").num_train == 500_000
        assert from_dict(CountdownConfig, c["task"], "task").num_numbers == 4
    elif name == "sft":
        cfg, engine = load_config(c)
        assert engine.device == "cuda"
        assert (cfg.model.name, cfg.data.max_seq_len, cfg.optim.lr) == ("paper_228m", 4096, 5e-5)
        assert cfg.train.batch_rows * cfg.train.grad_accum_steps * 8 == 256  # the paper's batch on 8 GPUs
    elif name == "rl":
        cfg = from_dict(RLConfig, c, "")
        assert (cfg.train.batch_problems, cfg.algo.group_size, cfg.train.steps) == (64, 5, 150)
        assert (cfg.engine.device, cfg.engine.dtype) == ("cuda", "bfloat16") and cfg.dist.placement.strategy == "PACK"
        gpus = cfg.dist.num_rollout_workers * cfg.dist.worker_gpus + cfg.dist.learner_gpus + cfg.dist.ref_gpus
        assert gpus == 8
        assert cfg.loss.kl_coef == (0.01 if stage == "rl_sosp" else 0.001)
    else:
        assert from_dict(EvalConfig, c["eval"], "eval").max_thread_tokens == 4096
        assert set(c["models"]) == {"sosp", "apr", "sosp_rl", "apr_rl"}


# The `engine` group (conf/engine/): one way to choose and tune the engine for every command.
SGLANG = ["engine=sglang", "engine.urls=[http://h1:30000,http://h2:30000]", "engine.max_retries=1"]


@pytest.mark.parametrize("command", ["sft", "rl", "eval", "solve"])
def test_engine_sglang_composes_for_every_command(command):
    from apr.cli.common import compose as compose_cli
    from apr.engine.config import engine_config, engine_name
    from apr.engine.sglang import SGLangEngineConfig

    c = compose_cli(command, SGLANG + (["init=/tmp/x"] if command == "rl" else []))
    engine = engine_config(c["engine"])
    assert isinstance(engine, SGLangEngineConfig) and engine_name(engine) == "sglang"
    assert (engine.urls, engine.max_retries) == (["http://h1:30000", "http://h2:30000"], 1)
    if command == "rl":  # the typed RLConfig holds it (two rollout workers, one server each)
        from apr.rl.config import RLConfig

        c.pop("hydra", None)
        assert from_dict(RLConfig, c, "").engine == engine
    if command == "sft":  # composes; training refuses it while the solve-rate hook is on (it needs local)
        from apr.cli.sft import load_config

        with pytest.raises(ConfigError, match=r"^engine: got 'sglang'; accepted: local for SFT"):
            load_config(c)
        assert load_config({**c, "eval": {**c["eval"], "num_problems": 0}})[1] == engine


@pytest.mark.parametrize("command, window", [("sft", "data.max_seq_len=384"), ("rl", "rollout.runtime.max_thread_tokens=384"),
                                             ("eval", "eval.max_thread_tokens=384")])
def test_local_engine_window_follows_the_command(command, window):
    from apr.cli.common import compose as compose_cli

    c = compose_cli(command, [window, "engine.device=cpu", "engine.dtype=bfloat16"]
                    + (["init=/tmp/x"] if command == "rl" else []))
    assert c["engine"]["name"] == "local" and c["engine"]["max_seq_len"] is None
    if command == "rl":
        from apr.rl.config import RLConfig

        c.pop("hydra", None)
        cfg = from_dict(RLConfig, c, "")
        assert (cfg.engine.max_seq_len, cfg.engine.dtype) == (384, "bfloat16")
    elif command == "sft":
        from apr.cli.sft import load_config

        assert load_config(c)[1].max_seq_len == 384


def test_rl_engine_typo_fails_at_load_naming_the_field():
    from apr.cli.common import compose as compose_cli
    from apr.rl.config import RLConfig

    c = compose_cli("rl", ["init=/tmp/x", "+engine.max_batch_sise=8"])
    c.pop("hydra", None)
    with pytest.raises(ConfigError, match=r"^engine.max_batch_sise: unknown field; accepted: attention_chunk_rows"):
        from_dict(RLConfig, c, "")
    c = compose_cli("rl", ["init=/tmp/x", *SGLANG, "dist.num_rollout_workers=3"])
    c.pop("hydra", None)
    with pytest.raises(ConfigError, match=r"^engine.urls: .*one server URL per rollout worker"):
        from_dict(RLConfig, c, "")
