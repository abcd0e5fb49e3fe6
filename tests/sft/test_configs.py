"""conf/sft.yaml composes with every model, solver, strategy and experiment, into a valid SFTConfig."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from apr.cli.common import to_container
from apr.cli.sft import load_config
from apr.config import ConfigError, from_dict
from apr.sft import SFTConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "sft").glob("*.yaml"))


def compose_sft(overrides, keep_engine=False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose("sft", overrides=overrides))
    if not keep_engine:
        c.pop("engine")  # the CLI parses it (apr.cli.sft.load_config): SFTConfig sits above the engines
    return c


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("solver", ["sosp", "apr"])
def test_sft_config_composes(model, solver):
    cfg, engine = load_config(compose_sft([f"model={model}", f"data.solver={solver}", "train.strategy=deepspeed"],
                                          keep_engine=True))
    assert cfg.model.name == model and cfg.name == f"{model}_{solver}"
    assert cfg.run_dir == f"runs/sft/{model}_{solver}"
    assert cfg.eval.limits["max_thread_tokens"] == cfg.data.max_seq_len
    assert engine.max_seq_len == cfg.data.max_seq_len  # null in conf/engine/local.yaml: the data's window


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_configs_compose(experiment):
    cfg = from_dict(SFTConfig, compose_sft([f"+sft={experiment}"]), "")
    model, solver = experiment.split("_")[1:]
    assert (cfg.model.name, cfg.data.solver) == (model, solver)
    assert cfg.data.max_seq_len <= cfg.model.max_position_embeddings


@pytest.mark.parametrize("override, field", [
    ("data.solver=greedy", "data.solver"),
    ("train.precision=fp16", "train.precision"),
    ("train.strategy=fsdp", "train.strategy"),
    ("train.zero_stage=4", "train.zero_stage"),
    ("data.max_seq_len=4096", "data.max_seq_len"),  # tiny: max_position_embeddings 2048
    ("optim.lr=0", "optim.lr"),
    ("data.overlong=wrap", "data.overlong"),
    ("+train.bogus=1", "train.bogus"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        from_dict(SFTConfig, compose_sft([override]), "")


def test_unknown_model_lists_the_presets():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="model/nope") as e:
        compose_sft(["model=nope"])
    assert all(m in str(e.value) for m in MODELS)


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch, capsys):
    """bf16 autocast on a CPU without AMX / AVX512-BF16 is emulated (measured ~40x slower than fp32 on an
    AVX2 EPYC): `auto` picks fp32 there, an explicit bf16 is kept with a warning."""
    import torch

    from apr.train import device as strategy

    cpu = torch.device("cpu")
    monkeypatch.delenv(strategy.AUTO_ENV, raising=False)
    monkeypatch.setattr(strategy, "has_native_bf16", lambda device: False)
    assert strategy.resolve_precision("auto", cpu) == "fp32"
    assert strategy.resolve_precision("bf16", cpu) == "bf16" and "emulated" in capsys.readouterr().out
    assert strategy.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(strategy, "has_native_bf16", lambda device: True)
    assert strategy.resolve_precision("auto", cpu) == "bf16" and capsys.readouterr().out == ""


def test_precision_auto_env_makes_auto_resolve_one_way_on_any_cpu(monkeypatch, capsys):
    """`APR_PRECISION_AUTO` decides what `auto` is (a whole suite run, Ray actors included), leaves an
    explicit precision alone, and a bad value is refused naming the variable."""
    import torch

    from apr.config import ConfigError
    from apr.train import device as strategy

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(strategy, "has_native_bf16", lambda device, native=native: native)
        monkeypatch.setenv(strategy.AUTO_ENV, "fp32")
        assert strategy.resolve_precision("auto", cpu) == "fp32"
        assert strategy.resolve_precision("bf16", cpu) == "bf16"
        monkeypatch.setenv(strategy.AUTO_ENV, "bf16")
        assert strategy.resolve_precision("auto", cpu) == "bf16"
        assert strategy.resolve_precision("fp32", cpu) == "fp32"
        assert ("APR_PRECISION_AUTO=bf16" in capsys.readouterr().out) is not native  # emulated: warned
    monkeypatch.setenv(strategy.AUTO_ENV, "fp16")
    with pytest.raises(ConfigError, match="APR_PRECISION_AUTO"):
        strategy.resolve_precision("auto", cpu)
