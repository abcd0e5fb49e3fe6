"""The `sglang` engine against a local stand-in server that speaks SGLang's native HTTP contract."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from apr.api import Reasoner
from apr.config import ConfigError, from_dict
from apr.engine import Request, SamplingParams
from apr.engine.scripted import ScriptedEngine
from apr.engine.sglang import SGLangEngine, SGLangEngineConfig, SGLangError, launch_server
from tests.engine.sglang_standin import Standin

STANDIN = Path(__file__).with_name("sglang_standin.py")
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
FAST = {"max_retries": 3, "backoff_s": 0.01, "timeout_s": 60.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint(path: Path, tokenizer, seed: int) -> Path:
    from apr.model.config import ModelConfig
    from apr.model.hf import build_for_tokenizer, save_checkpoint

    # init_std 0.5: a random model whose greedy outputs differ from prompt to prompt (as in _helpers)
    cfg = ModelConfig(name="test", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                      max_position_embeddings=256, init_std=0.5)
    return save_checkpoint(build_for_tokenizer(cfg, tokenizer, seed=seed), tokenizer, path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("sglang")
    return _checkpoint(root / "a", tokenizer, 0), _checkpoint(root / "b", tokenizer, 1)


@pytest.fixture
def server(ckpts):
    with Standin(str(ckpts[0])) as s:
        yield s


def _engine(*urls: str, **options) -> SGLangEngine:
    return SGLangEngine(SGLangEngineConfig(urls=list(urls), **{**FAST, **options}))


def _reference(path: Path, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """Local-engine outputs; like SGLang (without ignore_eos) it also stops at the model's eos."""
    from dataclasses import replace

    from apr.engine.local import LocalEngine

    engine = LocalEngine.from_pretrained(str(path), max_batch_size=8, max_seq_len=256)
    params = replace(params, stop_token_ids=params.stop_token_ids + (engine.model.config.eos_token_id,))
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, params))
    out = {c.request_id: c.output_ids for c in engine.run_until_done()}
    return [out[f"r{i}"] for i in range(len(prompts))]


PROMPTS = [[2, 17, 30, 44, 9], [2, 60, 61], [2, 5, 8, 13, 21, 34, 55]]


def test_reasoner_greedy_output_equals_local_engine(ckpts, server):
    local = Reasoner.from_pretrained(ckpts[0], engine="local", max_batch_size=8, max_seq_len=256)
    remote = Reasoner.from_pretrained(ckpts[0], engine="sglang", urls=[server.url], **FAST)
    assert remote.engine.config.context_len == 256 and remote.engine.vocab_size == len(remote.tokenizer)
    problems = [([3, 7, 11], 21), ([2, 9, 4], 17), ([5, 5, 6], 31)]
    want = local.solve_batch(problems, max_thread_tokens=64)
    got = remote.solve_batch(problems, max_thread_tokens=64)
    for w, g in zip(want, got):
        assert [t.ids for t in g.tree.threads] == [t.ids for t in w.tree.threads]
        for tw, tg in zip(w.tree.threads, g.tree.threads):
            assert max((abs(a - b) for a, b in zip(tw.logprobs, tg.logprobs)), default=0) < 1e-4
            assert any(lp < 0 for lp in tg.logprobs)  # real log-probs came back
    assert server.num_generate >= len(problems)
    # the contract: token ids in, stop ids kept, output log-probs, no special-token skipping
    body = next(b for p, b in server.calls if p == "/generate")
    assert body["return_logprob"] is True and body["input_ids"][0] == remote.protocol.bos
    sp = body["sampling_params"]
    assert sp["no_stop_trim"] is True and sp["skip_special_tokens"] is False and sp["temperature"] == 0.0
    assert set(sp["stop_token_ids"]) == set(remote.protocol.stop_ids) and "sampling_seed" in sp


def _replay_script(tokenizer, num_problems: int):
    """A deterministic 'model': the next token of whichever solver thread the context is a prefix of."""
    from apr.protocol import render_tree
    from apr.search import SearchConfig, solve
    from apr.task import CountdownConfig, generate_problems

    problems = generate_problems(CountdownConfig(num_numbers=4), num_problems, seed=3)
    results = [solve(p, SearchConfig("apr", promising_prob=0.9), seed=i) for i, p in enumerate(problems)]
    threads = [t.ids for r in results for t in render_tree(r.trace, tokenizer)]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for ids in threads:
        for n in range(2, len(ids)):  # every prefix: a resumed thread may arrive as one fresh context
            by_prompt.setdefault(tuple(ids[:n]), ids)

    def script(prompt, ctx):
        return by_prompt[tuple(ctx)][len(ctx)]

    return problems, results, script


def test_spawn_join_runtime_resumes_through_the_server(tokenizer):
    problems, results, script = _replay_script(tokenizer, 3)
    direct = Reasoner(ScriptedEngine(script), tokenizer).solve_batch(
        [(p.numbers, p.target) for p in problems], max_thread_tokens=100_000)
    factory = lambda path: (ScriptedEngine(script), None, 1_000_000)  # noqa: E731
    with Standin("scripted", engine_factory=factory) as s:
        reasoner = Reasoner(_engine(s.url), tokenizer)
        out = reasoner.solve_batch([(p.numbers, p.target) for p in problems], max_thread_tokens=100_000)
    assert [o.answer for o in out] == [r.answer for r in results] == [d.answer for d in direct]
    for o, d, r in zip(out, direct, results):
        assert [t.ids for t in o.tree.threads] == [t.ids for t in d.tree.threads]
        assert o.metrics["num_threads"] == r.trace.num_threads
    assert any(o.metrics["num_threads"] > 1 for o in out)
    # parents resumed after a join were sent whole and found their prefix in the server's cache
    assert sum(o.metrics["cached_tokens"] for o in out) > 0
    assert reasoner.engine.stats.num_cached_tokens > 0 and not reasoner.engine._kept


def test_logprobs_n_samples_seeds_and_resume(ckpts):
    server = Standin(str(ckpts[0]), deterministic=True).start()  # SGLang applies seeds only then
    engine = _engine(server.url, deterministic=True)
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=100)
    engine.submit(Request("q", PROMPTS[0], params, n=3, keep_cache=True))
    out = {c.request_id: c for c in engine.run_until_done()}
    assert sorted(out) == ["q/0", "q/1", "q/2"]
    for i in range(3):  # sample i is seeded seed + i, as in the local engine
        (ref,) = _reference(ckpts[0], [PROMPTS[0]], SamplingParams(temperature=1.0, max_new_tokens=10, seed=100 + i))
        assert out[f"q/{i}"].output_ids == ref and len(out[f"q/{i}"].logprobs) == 10
    # resume q/1 with appended ids: the full context goes out, the cached prefix is reported
    engine.submit(Request("q/1+", [7, 8], GREEDY, resume_id="q/1"))
    (resumed,) = engine.run_until_done()
    (ref,) = _reference(ckpts[0], [PROMPTS[0] + out["q/1"].output_ids + [7, 8]], GREEDY)
    assert resumed.output_ids == ref
    assert resumed.num_cached_tokens > 0 and resumed.num_prompt_tokens + resumed.num_cached_tokens == \
        len(PROMPTS[0]) + 10 + 2
    with pytest.raises(ConfigError, match="request.resume_id"):
        engine.submit(Request("x", [1], GREEDY, resume_id="q/1"))  # not kept (resumed without keep_cache)
    engine.release("q/0")
    engine.release("q/2")
    assert not engine._kept
    engine.close()
    server.stop()


def test_many_concurrent_requests_share_the_server_and_match_local(ckpts, server):
    prompts = [[2] + [(7 * i + j) % 90 + 5 for j in range(3 + i % 5)] for i in range(12)]
    engine = _engine(server.url, max_inflight=4)
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, GREEDY))
    assert time.perf_counter() - start < 0.5  # submit does not wait for the server
    assert engine.has_work()
    got = {c.request_id: c.output_ids for c in engine.run_until_done()}
    assert [got[f"r{i}"] for i in range(len(prompts))] == _reference(ckpts[0], prompts, GREEDY)
    assert engine.step() == [] and not engine.has_work()
    stats = server.engine.stats  # concurrent HTTP requests shared the server's forward passes
    assert stats.num_generated_tokens > 2 * stats.num_forward_calls
    engine.close()


def test_data_parallel_keeps_a_resumed_sequence_on_its_server(ckpts):
    with Standin(str(ckpts[0])) as a, Standin(str(ckpts[0])) as b:
        engine = _engine(a.url, b.url)
        for i, p in enumerate(PROMPTS + PROMPTS[:1]):
            engine.submit(Request(f"r{i}", p, GREEDY, keep_cache=True))
        first = {c.request_id: c for c in engine.run_until_done()}
        assert a.num_generate == 2 and b.num_generate == 2
        urls = {rid: engine._kept[rid].url for rid in first}
        for rid in first:
            engine.submit(Request(rid + "+", [9], GREEDY, resume_id=rid))
        for c in engine.run_until_done():
            assert c.num_cached_tokens > 0  # its server still held the prefix
            rid = c.request_id[:-1]
            home = a if urls[rid] == a.url else b
            full = (PROMPTS + PROMPTS[:1])[int(rid[1:])] + first[rid].output_ids + [9]
            assert full in [body["input_ids"] for path, body in home.calls if path == "/generate"]
        engine.close()


def test_unreachable_server_is_a_clear_error_naming_the_url(server):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError, match=f"engine.urls: {url} is not a healthy SGLang server"):
        _engine(server.url, url, max_retries=1)
    engine = _engine(server.url, max_retries=2)
    server.stop()  # dies after the health check
    engine.submit(Request("a", PROMPTS[0], GREEDY))
    with pytest.raises(SGLangError, match=f"{server.url}/generate: no answer after 3 attempts"):
        engine.run_until_done()


def test_retries_a_503_then_succeeds_and_gives_up_after_max_retries(ckpts, server):
    engine = _engine(server.url, max_retries=3)
    server.fail_next(2, 503)
    engine.submit(Request("a", PROMPTS[1], GREEDY))
    (c,) = engine.run_until_done()
    assert server.num_failed == 2 and c.output_ids == _reference(ckpts[0], [PROMPTS[1]], GREEDY)[0]
    server.fail_next(4, 503)
    engine.submit(Request("b", PROMPTS[1], GREEDY))
    with pytest.raises(SGLangError, match=f"{server.url}/generate: no answer after 4 attempts .*HTTP 503"):
        engine.run_until_done()


def test_a_rejected_request_is_not_retried(server):
    engine = _engine(server.url)  # no context_len: the server's own length check answers 400
    engine.submit(Request("a", PROMPTS[0], SamplingParams(max_new_tokens=300)))
    with pytest.raises(SGLangError, match=r"/generate: HTTP 400: .*maximum context length"):
        engine.run_until_done()
    assert server.num_generate == 0
    # with the context length known, the engine clamps instead, and an input that fills it ends "length"
    engine = _engine(server.url, context_len=256)
    engine.submit(Request("b", PROMPTS[1], SamplingParams(temperature=0.0, max_new_tokens=300)))
    engine.submit(Request("c", list(range(4, 260)), GREEDY))
    out = {c.request_id: c for c in engine.run_until_done()}
    assert len(out["b"].output_ids) == 256 - 1 - len(PROMPTS[1]) and out["b"].finish_reason == "length"
    assert out["c"].output_ids == [] and out["c"].finish_reason == "length"


def test_server_restarted_mid_run_requests_are_retried(ckpts):
    port = _free_port()
    first = Standin(str(ckpts[0]), port=port, step_sleep_s=0.02).start()
    engine = _engine(first.url, max_retries=6, backoff_s=0.1)
    params = SamplingParams(temperature=0.0, max_new_tokens=40)
    for i, p in enumerate(PROMPTS):
        engine.submit(Request(f"r{i}", p, params))
    deadline = time.monotonic() + 10
    while not first._running and time.monotonic() < deadline:
        time.sleep(0.01)
    first.stop()  # crash: in-flight calls are dropped unanswered
    time.sleep(0.2)
    with Standin(str(ckpts[0]), port=port) as second:
        got = {c.request_id: c.output_ids for c in engine.run_until_done()}
        assert first.num_generate == 0 and second.num_generate == len(PROMPTS)
    assert [got[f"r{i}"] for i in range(len(PROMPTS))] == _reference(ckpts[0], PROMPTS, params)
    engine.close()


def test_a_restarted_server_is_synced_again_and_its_stale_answers_are_discarded(ckpts, tmp_path):
    # review against the wheels (issue 24 item 2): a restarted server serves its launch checkpoint until the
    # next sync and says so in meta_info.weight_version, which the client ignored: RL trained on them
    from transformers import LlamaForCausalLM

    from apr.rl.weights import to_buckets

    port = _free_port()
    first = Standin(str(ckpts[0]), port=port).start()
    engine = SGLangEngine.from_pretrained(str(ckpts[0]), urls=[first.url], weights_dir=str(tmp_path),
                                          **{**FAST, "max_retries": 6, "backoff_s": 0.1})
    want_b = _reference(ckpts[1], PROMPTS, GREEDY)
    assert want_b != _reference(ckpts[0], PROMPTS, GREEDY)
    engine.load_weights(to_buckets(LlamaForCausalLM.from_pretrained(ckpts[1]).state_dict(), 0.05), 3)
    first.stop()
    with Standin(str(ckpts[0]), port=port) as second:  # restarted: the launch checkpoint, version "default"
        for i, p in enumerate(PROMPTS):
            engine.submit(Request(f"r{i}", p, GREEDY))
        got = {c.request_id: c.output_ids for c in engine.run_until_done()}
        assert [got[f"r{i}"] for i in range(len(PROMPTS))] == want_b  # the synced policy's answers only
        assert second.weight_version == "3"
        assert [b["weight_version"] for p, b in second.calls if p == "/update_weights_from_disk"] == ["3"]
        assert engine.num_stale_answers >= 1 and second.num_generate == len(PROMPTS) + engine.num_stale_answers
    engine.close()


def test_distributed_sync_refuses_answers_from_a_server_that_lost_its_weights(ckpts, server):
    engine = _engine(server.url, weight_sync="distributed", weight_sync_backend="gloo")
    engine._synced(7)  # as a broadcast of version 7 ends; the server (never updated) still says "default"
    engine.submit(Request("r", PROMPTS[0], GREEDY))
    with pytest.raises(SGLangError, match=rf"{server.url} serves weight version 'default', but version 7 was "
                                          r"synced: .*restarted.*resume=true.*engine.weight_sync=disk"):
        engine.run_until_done()
    engine.close()


def test_abort_in_flight_and_queued_requests(ckpts):
    with Standin(str(ckpts[0]), step_sleep_s=0.02) as s:
        engine = _engine(s.url, max_inflight=1)
        engine.submit(Request("long", PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=200), keep_cache=True))
        engine.submit(Request("queued", PROMPTS[1], GREEDY))
        deadline = time.monotonic() + 10
        while not s._running and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        engine.abort("queued")  # never left the client
        engine.abort("long")  # POST /abort_request with its rid
        out = {c.request_id: c for c in engine.run_until_done()}
    assert out["queued"].finish_reason == "abort" and out["queued"].output_ids == []
    assert out["long"].finish_reason == "abort" and 0 < len(out["long"].output_ids) < 200
    assert len(out["long"].logprobs) == len(out["long"].output_ids)
    (aborted,) = [b["rid"] for p, b in s.calls if p == "/abort_request"]
    assert aborted == next(b["rid"] for p, b in s.calls if p == "/generate") and "long" in aborted
    assert not engine._kept and not engine.has_work()  # an aborted request is never kept


def test_update_weights_from_disk_changes_outputs(ckpts, server, tmp_path):
    engine = SGLangEngine.from_pretrained(str(ckpts[0]), urls=[server.url], weights_dir=str(tmp_path), **FAST)
    want_a, want_b = (_reference(c, PROMPTS, GREEDY) for c in ckpts)
    assert want_a != want_b

    def run():
        for i, p in enumerate(PROMPTS):
            engine.submit(Request(f"r{i}", p, GREEDY))
        out = {c.request_id: c.output_ids for c in engine.run_until_done()}
        return [out[f"r{i}"] for i in range(len(PROMPTS))]

    assert run() == want_a
    engine.update_weights_from_disk(ckpts[1], version=1)
    assert engine.policy_version == 1 and server.weight_version == "1" and run() == want_b
    (path, body), = [(p, b) for p, b in server.calls if p == "/update_weights_from_disk"]
    assert body == {"model_path": str(ckpts[1]), "flush_cache": True, "weight_version": "1"}
    with pytest.raises(SGLangError, match="update_weights_from_disk: .*Failed to load"):
        engine.update_weights_from_disk(ckpts[1] / "missing", version=2)
    assert engine.policy_version == 1
    # learner buckets (the RL weight-sync payload) go through a checkpoint on disk
    from transformers import LlamaForCausalLM

    from apr.rl.weights import to_buckets

    for version, ckpt, want in ((4, ckpts[0], want_a), (5, ckpts[1], want_b)):
        engine.load_weights(to_buckets(LlamaForCausalLM.from_pretrained(ckpt).state_dict(), 0.05), version)
        assert engine.policy_version == version and server.weight_version == str(version) and run() == want
    assert Path(server.model_path).name == "v5" and not Path(server.model_path).with_name("v4").exists()
    engine.close()
    assert not any(tmp_path.iterdir())  # close removes the written checkpoints


def test_distributed_weight_sync_broadcasts_into_two_server_processes(ckpts, tmp_path):
    """weight_sync=distributed: one process group (this client rank 0, each server its rank), the
    tensors broadcast bucket by bucket (gloo here; NCCL on GPUs), nothing written to disk."""
    from transformers import LlamaForCausalLM

    from apr.rl.weights import to_buckets

    urls = [f"http://127.0.0.1:{_free_port()}" for _ in range(2)]
    engine = SGLangEngine.from_pretrained(str(ckpts[0]), urls=urls, launch=True, launch_timeout_s=120,
                                          launch_command=[sys.executable, str(STANDIN)], weights_dir=str(tmp_path),
                                          weight_sync="distributed", weight_sync_backend="gloo", **FAST)
    want_a, want_b = (_reference(c, PROMPTS, GREEDY) for c in ckpts)

    def run():  # requests spread over both servers
        for i, p in enumerate(PROMPTS * 2):
            engine.submit(Request(f"r{i}", p, GREEDY))
        out = {c.request_id: c.output_ids for c in engine.run_until_done()}
        return [out[f"r{i}"] for i in range(len(PROMPTS) * 2)]

    try:
        assert run() == want_a * 2
        for version, ckpt, want in ((1, ckpts[1], want_b), (2, ckpts[0], want_a)):
            buckets = to_buckets(LlamaForCausalLM.from_pretrained(ckpt).state_dict(), 0.02)
            assert len(buckets) > 1
            engine.load_weights(buckets, version)
            assert engine.policy_version == version and run() == want * 2
            assert [engine._client.call("GET", u, "/get_model_info")["weight_version"] for u in urls] == [str(version)] * 2
        assert not any(tmp_path.iterdir())  # nothing went through the disk
        # every broadcast ran inside a weight-update session (the stand-in refuses it outside one), and
        # close destroys the group on the servers before here
        engine._weights.close()
        for url in urls:
            paths = [p for p in engine._client.call("GET", url, "/_standin/calls") if "weight" in p]
            update = ["/begin_weight_update"] + ["/update_weights_from_distributed"] * len(buckets) + \
                ["/end_weight_update"]
            assert paths == ["/init_weights_update_group"] + update * 2 + ["/destroy_weights_update_group"]
    finally:
        engine.close()
    assert engine._update_group is None


def test_distributed_weight_sync_unreachable_address_is_a_clear_error(ckpts, server):
    engine = SGLangEngine.from_pretrained(str(ckpts[0]), urls=[server.url], weight_sync="distributed",
                                          weight_sync_backend="gloo", weight_sync_address="127.0.0.1",
                                          **{**FAST, "timeout_s": 3.0})
    server.handle = lambda path, body: (200, {"success": True, "message": "ignored"})  # a server that never joins
    with pytest.raises(SGLangError, match="weight_sync=distributed: could not form the weight-sync group"):
        engine.load_weights([{"lm_head.weight": torch.zeros(2, 2)}], 1)
    assert engine.policy_version == 0
    engine.close()


def test_launch_helper_starts_serves_and_stops_a_server(ckpts, tmp_path):
    port = _free_port()
    reasoner = Reasoner.from_pretrained(ckpts[0], engine="sglang", urls=[f"http://127.0.0.1:{port}"], launch=True,
                                        launch_command=[sys.executable, str(STANDIN)], launch_timeout_s=120)
    engine = reasoner.engine
    (handle,) = engine.servers
    engine.submit(Request("a", PROMPTS[2], GREEDY))
    (c,) = engine.run_until_done()
    assert c.output_ids == _reference(ckpts[0], [PROMPTS[2]], GREEDY)[0]
    engine.close()
    assert handle.process.poll() is not None and not Path(handle.log_path).exists()
    log = tmp_path / "server.log"
    with pytest.raises(SGLangError, match="exited with code 3 while starting.*\n.*no GPU here"):
        launch_server(ckpts[0], _free_port(), command=[sys.executable, "-c", "print('no GPU here'); exit(3)"],
                      timeout_s=30, log_path=str(log))
    assert "no GPU here" in log.read_text()


def test_config_validation_and_yaml(ckpts):
    from hydra import compose, initialize_config_dir

    from apr.cli.common import to_container
    from apr.engine.local import LocalEngineConfig

    with pytest.raises(ConfigError, match="engine.urls"):
        SGLangEngineConfig(urls=[])
    with pytest.raises(ConfigError, match="engine.max_inflight"):
        SGLangEngineConfig(max_inflight=0)
    with pytest.raises(ConfigError, match="engine.urls"):
        SGLangEngineConfig(urls=["http://gpu-node:30000"], launch=True)
    with pytest.raises(ConfigError, match="engine.max_retries"):
        from_dict(SGLangEngineConfig, {"max_retries": -1}, "engine")
    with pytest.raises(ConfigError, match="engine: got 'vllm'"):
        Reasoner.from_pretrained(ckpts[0], engine="vllm")
    conf = Path(__file__).parents[2] / "conf"
    for name, cls in (("sglang", SGLangEngineConfig), ("local", LocalEngineConfig)):
        with initialize_config_dir(str(conf / "engine"), version_base="1.3"):
            c = to_container(compose(name))
        assert c.pop("name") == name
        from_dict(cls, c, "engine")
