"""SGLang 0.5.x as it really behaves (issue 13), against the strict stand-in: weight-update sessions, seeds,
log-probs, versions, API keys, data parallelism and cleanup. docs/sglang.md cites the SGLang source of each."""

from __future__ import annotations

import os
import sys

import pytest
import requests
import torch

from apr.config import ConfigError
from apr.engine import Request, SamplingParams
from apr.engine.sglang import SGLangEngine, SGLangEngineConfig, SGLangError
from apr.engine.sglang.client import HttpClient
from apr.engine.sglang.probe import _local_logprobs
from tests.engine.sglang_standin import Standin
from tests.engine.test_sglang import (
    FAST,
    GREEDY,
    PROMPTS,
    STANDIN,
    _checkpoint,
    _engine,
    _free_port,
    _reference,
)

SAMPLED = SamplingParams(temperature=0.5, max_new_tokens=8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    torch.set_num_threads(2)
    return _checkpoint(tmp_path_factory.mktemp("strict") / "a", tokenizer, 0)


def _generate(server: Standin, sampling: dict, ids=None) -> requests.Response:
    body = {"input_ids": ids or PROMPTS[0], "sampling_params": {"max_new_tokens": 6, **sampling},
            "return_logprob": True}
    return requests.post(server.url + "/generate", json=body, timeout=60)


# ---- 1. weight-update sessions ------------------------------------------------------------------
def test_distributed_update_is_refused_outside_a_session_without_joining(ckpt):
    with Standin(str(ckpt)) as s:
        body = {"names": ["lm_head.weight"], "dtypes": ["float32"], "shapes": [[2, 2]], "group_name": "g"}
        r = requests.post(s.url + "/update_weights_from_distributed", json=body, timeout=10)
        assert r.status_code == 400 and r.json() == {
            "success": False, "message": "update_weights_from_distributed must run between begin_weight_update() and "
                                         "end_weight_update()"}
        post = lambda path: requests.post(s.url + path, json={}, timeout=10)  # noqa: E731
        assert post("/end_weight_update").json()["success"] is False  # no session to end
        assert post("/begin_weight_update").json()["success"] is True
        assert post("/begin_weight_update").status_code == 400  # one session at a time
        assert post("/end_weight_update").json()["success"] is True and not s.is_session_open


def test_disk_updates_are_bracketed_by_a_session_also_when_they_fail(ckpt, tmp_path):
    with Standin(str(ckpt)) as s:
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], weights_dir=str(tmp_path), **FAST)
        engine.update_weights_from_disk(ckpt, version=1)
        with pytest.raises(SGLangError, match="update_weights_from_disk: .*Failed to load"):
            engine.update_weights_from_disk(ckpt / "missing", version=2)
        paths = [p for p, _ in s.calls if "weight" in p]
        assert paths == ["/begin_weight_update", "/update_weights_from_disk", "/end_weight_update"] * 2
        assert not s.is_session_open and engine.policy_version == 1
        engine.close()


def test_a_server_restarted_inside_a_disk_update_session_is_updated_again(ckpt, tmp_path):
    """A server that restarts between begin_weight_update and end_weight_update has lost the session (its
    end answers 400): the whole update is done again on it, instead of failing the RL step."""
    port = _free_port()
    first = Standin(str(ckpt), port=port).start()
    servers = [first]
    engine = SGLangEngine.from_pretrained(str(ckpt), urls=[first.url], weights_dir=str(tmp_path),
                                          **{**FAST, "max_retries": 6, "backoff_s": 0.1})
    client = engine._weights.client
    real_call = client.call

    def call(method, url, path, *args, **kwargs):
        out = real_call(method, url, path, *args, **kwargs)
        if path == "/begin_weight_update" and len(servers) == 1:  # the server restarts inside the session
            first.stop()
            servers.append(Standin(str(ckpt), port=port).start())
        return out

    client.call = call
    try:
        engine.update_weights_from_disk(ckpt, version=1)
        second = servers[1]
        paths = [p for p, _ in second.calls if "weight" in p]
        assert paths == ["/update_weights_from_disk", "/end_weight_update",  # the session was lost here
                         "/begin_weight_update", "/update_weights_from_disk", "/end_weight_update"]
        assert second.weight_version == "1" and not second.is_session_open and engine.policy_version == 1
    finally:
        engine.close()
        for server in servers:
            server.stop()


def test_a_server_from_before_sessions_is_updated_without_one(ckpt, tmp_path):
    with Standin(str(ckpt), version="0.5.10") as s:  # /begin_weight_update answers 404
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], weights_dir=str(tmp_path), **FAST)
        engine.update_weights_from_disk(ckpt, version=3)
        assert [p for p, _ in s.calls if "weight" in p] == ["/begin_weight_update", "/update_weights_from_disk"]
        assert s.weight_version == "3"
        engine.close()


@pytest.mark.parametrize("version,sessions,unknown_field", [("0.4.9.post6", False, 500), ("0.5.15", False, 500),
                                                           ("0.5.20", False, 500), ("0.5.23", True, 400)])
def test_the_standin_follows_the_released_wheels_by_version(ckpt, tmp_path, version, sessions, unknown_field):
    # review against the wheels (issue 24 item 3): sessions are in 0.5.21 and 0.5.23 only (absent from 0.5.14,
    # 0.5.15, 0.5.19, 0.5.20); from 0.5.22 an unknown /generate field is a 400 (a schema check), before a 500
    legacy = version.startswith("0.4")
    with Standin(str(ckpt), version=version, legacy=legacy) as s:
        assert s.has_sessions is sessions
        r = requests.post(s.url + "/generate", json={"input_ids": [2, 5], "sampling_params": {"bogus": 1}}, timeout=10)
        assert r.status_code == unknown_field
        if legacy:  # the client refuses 0.4.x at start (tested above)
            return
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], weights_dir=str(tmp_path), **FAST)
        engine.update_weights_from_disk(ckpt, version=2)
        weight_calls = [p for p, _ in s.calls if "weight" in p]
        assert weight_calls == (["/begin_weight_update", "/update_weights_from_disk", "/end_weight_update"] if sessions
                                else ["/begin_weight_update", "/update_weights_from_disk"])
        assert s.weight_version == "2" and not s.is_session_open
        engine.close()


def test_a_session_left_open_by_a_dead_trainer_is_recovered(ckpt, tmp_path, caplog):
    # review (issue 24 item 4): a trainer that died between begin and end left the session open; every later
    # begin answered 400 "already open" and nothing could sync without restarting the server
    import logging

    with Standin(str(ckpt)) as s:
        assert requests.post(s.url + "/begin_weight_update", json={}, timeout=10).json()["success"]  # the dead one
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], weights_dir=str(tmp_path), **FAST)
        with caplog.at_level(logging.WARNING, logger="apr.engine.sglang.weights"):
            engine.update_weights_from_disk(ckpt, version=4)
            engine.update_weights_from_disk(ckpt, version=5)
        assert s.weight_version == "5" and not s.is_session_open
        weight_calls = [p for p, _ in s.calls if "weight" in p]
        assert weight_calls[:5] == ["/begin_weight_update", "/begin_weight_update", "/end_weight_update",
                                    "/begin_weight_update", "/update_weights_from_disk"]
        assert sum("left open" in r.message for r in caplog.records) == 1  # logged once
        engine.close()


# ---- 2. seeds ------------------------------------------------------------------------------------
def test_seeds_are_ignored_unless_the_server_is_deterministic(ckpt):
    with Standin(str(ckpt)) as s:
        engine = _engine(s.url)
        assert not engine.honours_seeds
        with pytest.warns(UserWarning, match="ignore sampling_seed"):
            for rid in ("a", "b"):
                engine.submit(Request(rid, PROMPTS[0], SamplingParams(temperature=1.0, max_new_tokens=10, seed=5)))
        out = {c.request_id: c.output_ids for c in engine.run_until_done()}
        assert out["a"] != out["b"]  # same seed, different samples: the server ignored it
        assert [b["sampling_params"]["sampling_seed"] for p, b in s.calls if p == "/generate"] == [5, 5]
    with pytest.raises(ConfigError, match="engine.deterministic: true, but .* --enable-deterministic-inference"):
        with Standin(str(ckpt)) as s:
            _engine(s.url, deterministic=True)


def test_a_deterministic_server_seeds_unseeded_requests_with_42_and_the_engine_always_sends_one(ckpt):
    with Standin(str(ckpt), deterministic=True) as s:
        a, b = (_generate(s, {"temperature": 1.0}).json()["output_ids"] for _ in range(2))
        (want,) = _reference(ckpt, [PROMPTS[0]], SamplingParams(temperature=1.0, max_new_tokens=6, seed=42))
        assert a == b == want  # n > 1 samples without seeds would all be alike: the engine draws one each
        engine = _engine(s.url, deterministic=True)
        engine.submit(Request("q", PROMPTS[0], SamplingParams(temperature=1.0, max_new_tokens=6), n=2))
        out = {c.request_id: c.output_ids for c in engine.run_until_done()}
        seeds = [b["sampling_params"].get("sampling_seed") for p, b in s.calls if p == "/generate"][2:]
        assert len(set(seeds)) == 2 and out["q/0"] != out["q/1"]


# ---- 3. versions, unknown fields ---------------------------------------------------------------------
def test_server_version_is_read_and_old_servers_are_refused_naming_the_version(ckpt):
    with Standin(str(ckpt)) as s:
        assert requests.get(s.url + "/server_info", timeout=10).json()["version"] == "0.5.23"
        assert _engine(s.url).server_info[s.url]["version"] == "0.5.23"
        assert _generate(s, {"temperature": 0.0, "best_of": 2}).status_code == 400  # unknown key: 0.5.22 schema check
    with Standin(str(ckpt), legacy=True) as s:  # 0.4.9.post6: /get_server_info only, no sampling_seed
        assert requests.get(s.url + "/server_info", timeout=10).status_code == 404
        assert _generate(s, {"temperature": 0.0, "sampling_seed": 1}).status_code == 500
        with pytest.raises(ConfigError, match=r"engine.urls: .* runs SGLang 0.4.9.post6; apr needs >= 0.5.3"):
            _engine(s.url)


# ---- 4. log-probs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("is_original", [False, True])
def test_logprobs_are_tempered_unless_the_environment_variable_is_set(ckpt, monkeypatch, is_original):
    if is_original:
        monkeypatch.setenv("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")
    with Standin(str(ckpt)) as s:
        assert s.return_original_logprob is is_original
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], **FAST)
        engine.submit(Request("a", PROMPTS[0], SAMPLED))
        (c,) = engine.run_until_done()
        tempered, raw = _local_logprobs(str(ckpt), PROMPTS[0], c.output_ids, SAMPLED.temperature)
        want = raw if is_original else tempered
        assert max(abs(x - y) for x, y in zip(c.logprobs, want)) < 1e-4
        assert max(abs(x - y) for x, y in zip(raw, tempered)) > 0.1  # the two differ clearly
        # the start-up check: probed, then refused for RL at a temperature where they differ
        assert engine.check_logprobs(1.0) == ("original" if is_original else "tempered")
        if is_original:
            with pytest.raises(ConfigError, match="engine.server_logprobs: .* return raw log-probs .* temperature 0.7"):
                engine.check_logprobs(0.7)
        else:
            assert engine.check_logprobs(0.7) == "tempered"
        engine.close()


def test_declared_server_logprobs_skip_the_probe(ckpt):
    with Standin(str(ckpt)) as s:
        declared = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], server_logprobs="tempered", **FAST)
        assert declared.check_logprobs(0.7) == "tempered" and s.num_generate == 0
        original = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], server_logprobs="original", **FAST)
        with pytest.raises(ConfigError, match="engine.server_logprobs"):
            original.check_logprobs(0.7)
    with pytest.raises(ConfigError, match="engine.server_logprobs: got 'raw'; accepted: check | tempered | original"):
        _engine("http://127.0.0.1:1", server_logprobs="raw")


def test_launched_servers_get_the_flags_and_return_tempered_logprobs(ckpt, monkeypatch):
    """--enable-deterministic-inference, --attention-backend, --api-key reach the server; an inherited
    SGLANG_RETURN_ORIGINAL_LOGPROB does not."""
    monkeypatch.setenv("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")
    engine = SGLangEngine.from_pretrained(
        str(ckpt), urls=[f"http://127.0.0.1:{_free_port()}"], launch=True, launch_command=[sys.executable, str(STANDIN)],
        launch_timeout_s=120, deterministic=True, attention_backend="triton", api_key="k3y", **FAST)
    try:
        (info,) = engine.server_info.values()
        assert info["enable_deterministic_inference"] is True and info["attention_backend"] == "triton"
        assert requests.get(engine.servers[0].url + "/server_info", timeout=10).status_code == 401
        assert engine.check_logprobs(0.7) == "tempered"
    finally:
        engine.close()


# ---- 5. API key, data parallelism, cleanup, NCCL -----------------------------------------------------------------
def test_api_key_is_sent_as_a_bearer_token(ckpt):
    with Standin(str(ckpt), api_key="s3cret") as s:
        with pytest.raises(ConfigError, match="engine.api_key: .*/server_info answered 401"):
            _engine(s.url)
        with pytest.raises(ConfigError, match="the one given was refused"):
            _engine(s.url, api_key="wrong")
        engine = _engine(s.url, api_key="s3cret")
        engine.submit(Request("a", PROMPTS[1], GREEDY))
        (c,) = engine.run_until_done()
        assert c.output_ids == _reference(ckpt, [PROMPTS[1]], GREEDY)[0]


def test_admin_routes_get_the_admin_key_and_a_401_names_the_right_field(ckpt, tmp_path):
    # review against the wheels (issue 24 item 6): with --admin-api-key the weight-update and /abort_request
    # routes refuse the plain key, and the client's 401 message pointed at engine.api_key
    with Standin(str(ckpt), api_key="s3cret", admin_api_key="adm1n") as s:
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], weights_dir=str(tmp_path), api_key="s3cret",
                                              **FAST)
        with pytest.raises(ConfigError, match="^engine.admin_api_key: .*/begin_weight_update answered 401 .* "
                                              "--admin-api-key: set engine.admin_api_key"):
            engine.update_weights_from_disk(ckpt, version=1)
        engine.close()
        engine = SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], weights_dir=str(tmp_path), api_key="s3cret",
                                              admin_api_key="adm1n", **FAST)
        engine.update_weights_from_disk(ckpt, version=2)  # admin routes: the admin key
        assert s.weight_version == "2"
        engine.submit(Request("a", PROMPTS[1], GREEDY))  # normal routes: still the api key
        (c,) = engine.run_until_done()
        assert c.output_ids == _reference(ckpt, [PROMPTS[1]], GREEDY)[0]
        engine.close()
    with Standin(str(ckpt), admin_api_key="adm1n") as s:  # admin key only: normal routes are open
        engine = _engine(s.url, admin_api_key="adm1n")
        engine.submit(Request("b", PROMPTS[0], GREEDY))
        assert engine.run_until_done()[0].output_ids == _reference(ckpt, [PROMPTS[0]], GREEDY)[0]
        engine.close()
    from apr.engine.sglang.launch import server_args

    args = server_args(SGLangEngineConfig(urls=["http://h:1"], api_key="k", admin_api_key="a"))
    assert args[args.index("--admin-api-key") + 1] == "a"


def test_the_served_dtype_is_asked_for_and_checked(ckpt):
    # review against the wheels (issue 24 item 1): the launcher never passed --dtype, and SGLang serves an fp32
    # checkpoint in float16, while the local CUDA engine decodes in bf16: the greedy-tree check could not pass
    from apr.engine.sglang.launch import server_args

    assert SGLangEngineConfig().dtype == "bfloat16"
    args = server_args(SGLangEngineConfig(urls=["http://h:1"]))
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert "--dtype" not in server_args(SGLangEngineConfig(urls=["http://h:1"], dtype="auto"))
    with Standin(str(ckpt), dtype="auto") as s:  # started by hand without --dtype: fp32 checkpoint -> float16
        with pytest.raises(ConfigError, match=r"^engine.dtype: bfloat16, but .* serves in float16 \(its --dtype is "
                                              r"'auto'\); start it with --dtype bfloat16, or set engine.dtype=float16"):
            SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], **FAST)
        SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], dtype="float16", **FAST).close()
        SGLangEngine.from_pretrained(str(ckpt), urls=[s.url], dtype="auto", **FAST).close()
    with Standin(str(ckpt), dtype="float32") as s:
        with pytest.raises(ConfigError, match="engine.dtype: bfloat16, but .* serves in float32"):
            _engine(s.url)
        _engine(s.url, dtype="float32").close()
    with pytest.raises(ConfigError, match="engine.dtype: got 'fp8'; accepted: bfloat16, float16, float32, auto"):
        SGLangEngineConfig(dtype="fp8")


def test_distributed_sync_refuses_data_parallel_servers_and_wrong_tp(ckpt):
    with Standin(str(ckpt), dp_size=2) as s:
        _engine(s.url, weight_sync="disk")  # fine: disk updates go through the tokenizer manager to every dp rank
        with pytest.raises(ConfigError, match="engine.weight_sync: distributed needs servers with --dp-size 1"):
            _engine(s.url, weight_sync="distributed", weight_sync_backend="gloo")
    with Standin(str(ckpt), tp_size=2) as s:
        with pytest.raises(ConfigError, match="engine.ranks_per_server: got 1, but .* runs on 2 GPU"):
            _engine(s.url, weight_sync="distributed", weight_sync_backend="gloo")
    # review (issue 24 item 7): SGLang's rank in the group is rank_offset + tp_rank, no pipeline term; the
    # client counted tp x pp, so with pp > 1 stages collided and the group setup hung
    with Standin(str(ckpt), tp_size=2) as s:
        s.server_args["pp_size"] = 2
        with pytest.raises(ConfigError, match="engine.weight_sync: distributed needs servers with --pp-size 1, .* "
                                              "--pp-size 2: its pipeline stages would join .* same ranks"):
            _engine(s.url, weight_sync="distributed", weight_sync_backend="gloo", ranks_per_server=4)
        _engine(s.url, weight_sync="disk")  # disk updates are fine


def test_calls_made_during_a_broadcast_are_never_retried(ckpt):
    # review (issue 24 item 5): a 5xx to /update_weights_from_distributed was retried while the main thread sat
    # in the broadcast; a server-side assertion then hung the client until the group timeout (600 s)
    from apr.engine.sglang.weights import WeightUpdater

    with Standin(str(ckpt)) as s:
        cfg = SGLangEngineConfig(urls=[s.url], **{**FAST, "max_retries": 5})
        updater = WeightUpdater(cfg, HttpClient(cfg), "t")
        for path in ("/update_weights_from_distributed", "/init_weights_update_group"):
            s.fail_next(2, 500, path=path)
            future = (updater.announce(["w"], ["float32"], [[2]], 1, "g") if path.endswith("distributed")
                      else updater.init_group("127.0.0.1", 1, 2, "g", "gloo", 1))
            with pytest.raises(SGLangError, match=f"{path}: HTTP 500: .*injected failure: AssertionError"):
                future.result(timeout=30)
            assert [p for p, _ in s.calls].count(path) == 1  # one attempt, its error at once


def test_the_nccl_path_sets_the_trainer_side_environment(ckpt, monkeypatch):
    import apr.engine.sglang.weights as weights

    for name in weights.NCCL_ENV:
        monkeypatch.delenv(name, raising=False)

    def no_group(*args, **kwargs):
        raise RuntimeError("no GPUs here")

    monkeypatch.setattr(weights, "new_update_group", no_group)
    with Standin(str(ckpt)) as s:
        engine = _engine(s.url, weight_sync="distributed", weight_sync_backend="nccl")
        s.handle = lambda path, body: (200, {"success": True, "message": ""})
        with pytest.raises(SGLangError, match="could not form the weight-sync group.*no GPUs here"):
            engine._weights._join_group()
    assert {k: os.environ[k] for k in weights.NCCL_ENV} == {"NCCL_CUMEM_ENABLE": "0", "NCCL_NVLS_ENABLE": "0"}
