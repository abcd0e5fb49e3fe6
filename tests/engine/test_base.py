"""Validation of the engine's public dataclasses: errors name the field and what is accepted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apr.config import ConfigError
from apr.engine import Request, SamplingParams


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"temperature": -0.5}, "sampling.temperature"),
    ({"temperature": float("nan")}, "sampling.temperature"),
    ({"top_p": 0.0}, "sampling.top_p"),
    ({"top_p": 1.5}, "sampling.top_p"),
    ({"top_k": -2}, "sampling.top_k"),
    ({"max_new_tokens": 0}, "sampling.max_new_tokens"),
    ({"stop_token_ids": (3, -1)}, "sampling.stop_token_ids"),
    ({"seed": -1}, "sampling.seed"),
    ({"seed": 1.5}, "sampling.seed"),
])
def test_sampling_params_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}: got .*; accepted: "):
        SamplingParams(**kwargs)


def test_sampling_params_defaults_and_lists():
    p = SamplingParams(stop_token_ids=[3, 4])
    assert p.stop_token_ids == (3, 4) and not p.is_greedy and not p.uses_top_k_or_p
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(top_k=5).uses_top_k_or_p and SamplingParams(top_p=0.5).uses_top_k_or_p


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"request_id": "", "prompt_ids": [1]}, "request.request_id"),
    ({"request_id": "a", "prompt_ids": []}, "request.prompt_ids"),
    ({"request_id": "a", "prompt_ids": [1, -2]}, "request.prompt_ids"),
    ({"request_id": "a", "prompt_ids": [1], "n": 0}, "request.n"),
    ({"request_id": "a", "prompt_ids": [1], "n": 2, "resume_id": "b"}, "request.n"),
    ({"request_id": "a", "prompt_ids": [1], "params": {"temperature": 0}}, "request.params"),
])
def test_request_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}: got "):
        Request(**kwargs)


def test_continuation_may_append_nothing_and_sample_ids():
    assert Request("b", [], resume_id="a").prompt_ids == []
    assert Request("x", [1], n=3).sample_ids() == ["x/0", "x/1", "x/2"]
    assert Request("x", [1]).sample_ids() == ["x"]


def test_importing_the_interface_does_not_import_torch():
    code = "import sys, apr.engine; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
