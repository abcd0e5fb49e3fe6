"""The engine choice (`apr.engine.config`): `name` picks the dataclass, whose own fields are the accepted keys."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from apr.config import ConfigError, from_dict, to_dict
from apr.engine.config import ENGINES, engine_class, engine_config, engine_name, engine_options, with_window
from apr.engine.local import LocalEngineConfig
from apr.engine.sglang import SGLangEngineConfig

CONF = Path(__file__).resolve().parents[2] / "conf" / "engine"


def test_name_picks_the_dataclass():
    local = engine_config({"name": "local", "device": "cpu", "max_batch_size": 4})
    assert isinstance(local, LocalEngineConfig) and local.max_batch_size == 4 and engine_name(local) == "local"
    remote = engine_config({"name": "sglang", "urls": ["http://h:30000/"]})
    assert isinstance(remote, SGLangEngineConfig) and remote.urls == ["http://h:30000"]
    assert engine_name(remote) == "sglang"
    assert isinstance(engine_config({}), LocalEngineConfig)  # name defaults to local
    assert engine_config(remote) is remote  # already parsed


@pytest.mark.parametrize("data, message", [
    ({"name": "vllm"}, r"^engine.name: got 'vllm'; accepted: local, sglang"),
    ({"name": "local", "max_batch_sise": 3}, r"^engine.max_batch_sise: unknown field; accepted: attention_chunk_rows"),
    ({"name": "sglang", "max_batch_size": 3}, r"^engine.max_batch_size: unknown field; accepted: .*urls"),
    ({"name": "sglang", "urls": "http://h:1"}, r"^engine.urls: got 'http://h:1'; accepted: a list"),
    ({"name": "local", "device": "gpu7"}, r"^engine.device: got 'gpu7'"),
    ("sglang", r"^engine: got 'sglang'; accepted: a mapping"),
])
def test_bad_engine_fields_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        engine_config(data)


def test_a_dataclass_field_holding_the_engine_is_parsed_at_load():
    from apr.engine.config import EngineConfig

    @dataclasses.dataclass
    class Job:
        engine: EngineConfig = dataclasses.field(default_factory=lambda: engine_config({}))

    job = from_dict(Job, {"engine": {"name": "sglang", "urls": ["http://a:1"]}}, "")
    assert isinstance(job.engine, SGLangEngineConfig)
    with pytest.raises(ConfigError, match=r"^rl.engine.timeout_sec: unknown field"):
        from_dict(Job, {"engine": {"name": "sglang", "timeout_sec": 3}}, "rl")
    # the recorded dict names the engine, so that it parses into the same class again
    assert to_dict(job)["engine"]["name"] == "sglang"
    assert from_dict(Job, to_dict(job), "").engine == job.engine
    assert "name" not in engine_options(job.engine)


def test_null_window_is_filled_by_the_command():
    cfg = engine_config({"name": "local", "max_seq_len": None})
    assert cfg.max_seq_len is None and with_window(cfg, 512).max_seq_len == 512
    assert with_window(engine_config({"max_seq_len": 64}), 512).max_seq_len == 64  # set: kept
    remote = engine_config({"name": "sglang"})
    assert with_window(remote, 512) is remote


def test_an_unfilled_window_never_reaches_an_engine(tokenizer):
    from apr.engine.local import LocalEngine
    from apr.model import ModelConfig
    from apr.model.hf import build_for_tokenizer

    model = build_for_tokenizer(ModelConfig("t", 32, 1, 2, None, 64, 256), tokenizer, seed=0)
    with pytest.raises(ConfigError, match="engine.max_seq_len"):
        LocalEngine(model, LocalEngineConfig(max_seq_len=None))


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_each_engine_yaml_lists_exactly_its_dataclass_fields(name):
    # conf/engine/<name>.yaml documents every field; a field added to the dataclass must appear there
    # (otherwise `engine.<field>=...` needs a `+`), and no YAML key may be unknown to the dataclass
    keys = set(yaml.safe_load((CONF / f"{name}.yaml").read_text()))
    fields = {f.name for f in dataclasses.fields(engine_class(name)) if f.init}
    assert keys - {"name"} == fields
    assert yaml.safe_load((CONF / f"{name}.yaml").read_text())["name"] == name
