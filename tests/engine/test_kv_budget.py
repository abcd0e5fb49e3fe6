"""KV sized to a memory budget: accounting, adaptive row length, admission and preemption when short."""

from __future__ import annotations

import pytest
import torch

from apr.config import ConfigError
from apr.engine import Request, SamplingParams
from apr.engine.kv_budget import free_memory_bytes, parse_bytes
from apr.engine.kv_cache import KVCache
from tests.engine._helpers import by_id, hf_greedy, random_prompts
from tests.engine.test_scheduler import check_invariants

PER_POSITION = 2 * 2 * 2 * 16 * 4  # K and V x 2 layers x 2 kv heads x head_dim 16 x fp32 (the test model)


def greedy(max_new: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new)


def test_budget_accounting(make_engine):
    assert KVCache.bytes_per_position(2, 2, 16, torch.float32) == PER_POSITION
    assert parse_bytes("64KiB") == 65536 and parse_bytes("1.5 kb") == 1500
    engine = make_engine(kv_memory=1000 * PER_POSITION + 7)  # bytes: the remainder buys no position
    assert engine.kv.num_positions == 1000 and engine.kv.nbytes == 1000 * PER_POSITION
    assert (engine.kv.row_len, engine.kv.num_slots) == (64, 15)  # short rows until a sequence needs more
    assert make_engine(kv_memory="512KiB").kv.num_positions == 1024
    # the default reserves num_slots x max_seq_len (2 x max_batch_size when unset), as before budgets
    assert make_engine().kv.num_positions == 2 * 8 * 128
    assert make_engine(num_slots=3).kv.num_positions == 3 * 128
    expected = 1e-3 * free_memory_bytes(torch.device("cpu")) / PER_POSITION  # a share of what is free now
    assert abs(make_engine(kv_memory=1e-3).kv.num_positions / expected - 1) < 0.2
    assert make_engine(num_slots=2, kv_memory="1MiB").kv.num_slots == 2  # num_slots caps the rows


@pytest.mark.parametrize("value", ["lots", -1, 0, 1.5, 0.0, True])
def test_bad_kv_memory_names_the_field(value):
    from apr.engine import LocalEngineConfig

    with pytest.raises(ConfigError, match="^engine.kv_memory: got"):
        LocalEngineConfig(kv_memory=value)


def test_budget_below_one_window_is_an_error(make_engine):
    with pytest.raises(ConfigError, match=r"^engine.kv_memory: got 4096 = 4,096 bytes, 8 positions .*"
                                          r"one sequence at engine.max_seq_len=128"):
        make_engine(kv_memory=4096)
    make_engine(kv_memory=128 * PER_POSITION)  # exactly one window is enough


def test_resize_keeps_every_live_prefix():
    kv = KVCache(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu",
                 num_positions=512, max_seq_len=256)
    assert (kv.row_len, kv.num_slots) == (64, 8)
    lengths = [0] * 8
    for slot, n in ((0, 50), (1, 64), (6, 3)):
        kv.assign(slot, f"seq{slot}")
        kv.k[:, slot, :, :n] = torch.randn(2, 2, n, 4)  # (L, Hkv, n, D)
        kv.v[:, slot, :, :n] = torch.randn(2, 2, n, 4)
        lengths[slot] = n
    before = {kv.owner[s]: (kv.k[:, s, :, :lengths[s]].clone(), kv.v[:, s, :, :lengths[s]].clone())
              for s in (0, 1, 6)}
    kv.resize(128, lengths)  # 4 rows: slot 6 moves to the highest free one, 0 and 1 stay
    assert (kv.row_len, kv.num_slots, kv.owner) == (128, 4, ["seq0", "seq1", None, "seq6"])
    kv.resize(64, [50, 64, 0, 3])  # and back: 8 rows
    for slot, owner in enumerate(kv.owner):
        if owner is not None:
            k, v = before.pop(owner)
            assert torch.equal(kv.k[:, slot, :, :k.shape[2]], k) and torch.equal(kv.v[:, slot, :, :v.shape[2]], v)
    assert not before and torch.isfinite(kv.k).all()


def test_short_budget_admits_what_fits_and_outputs_match_a_large_one(model, make_engine):
    prompts = random_prompts((5, 12, 3, 9, 7, 10), seed=20)
    small = make_engine(kv_memory=256 * PER_POSITION)  # 4 rows of 64, or 2 of 128
    large = make_engine(kv_memory=4096 * PER_POSITION)
    outs = []
    for engine in (small, large):
        for i, p in enumerate(prompts):
            engine.submit(Request(f"r{i}", p, greedy(40 if i % 2 else 90)))
        done = []
        while engine.has_work():
            done += engine.step()
            assert len(engine.scheduler.running) <= engine.kv.num_slots
            check_invariants(engine)
        outs.append(by_id(done))
    assert small.stats.num_preemptions > 0 and large.stats.num_preemptions == 0
    assert small.stats.num_kv_resizes > 0
    for i, p in enumerate(prompts):  # nothing dropped, token-identical, same log-probs
        a, b = outs[0][f"r{i}"], outs[1][f"r{i}"]
        assert a.finish_reason == b.finish_reason == "length"
        assert a.output_ids == b.output_ids == hf_greedy(model, p, len(a.output_ids))
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
        assert a.num_prompt_tokens == len(p)  # a preempted sequence's recompute is not a new prompt


def test_preempted_sampled_sequences_draw_what_they_would_have(make_engine):
    """A preempted sequence's draws continue at its own token count: the tokens are those of a roomy engine."""
    prompts = random_prompts((5, 12, 3, 9, 7, 10), seed=22)
    outs, engines = [], []
    for memory in (256, 4096):
        engine = make_engine(kv_memory=memory * PER_POSITION)
        for i, p in enumerate(prompts):
            engine.submit(Request(f"r{i}", p, SamplingParams(temperature=1.0, max_new_tokens=40 if i % 2 else 90,
                                                             seed=i)))
        done = []
        while engine.has_work():
            done += engine.step()
            check_invariants(engine)
        outs.append(by_id(done))
        engines.append(engine)
    assert engines[0].stats.num_preemptions > 0 and engines[1].stats.num_preemptions == 0
    for i in range(len(prompts)):
        a, b = outs[0][f"r{i}"], outs[1][f"r{i}"]
        assert a.output_ids == b.output_ids and len(a.output_ids) == (40 if i % 2 else 90)
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_suspended_parent_keeps_its_kv_across_row_growth(model, make_engine):
    engine = make_engine(kv_memory=1024 * PER_POSITION)
    parent, child = random_prompts((6, 4), seed=21)
    engine.submit(Request("p", parent, greedy(10), keep_cache=True))
    (first,) = engine.run_until_done()
    engine.submit(Request("c", child, greedy(100)))  # grows rows past 64, then 128
    engine.run_until_done()
    assert engine.kv.row_len == 128 and engine.stats.num_kv_resizes >= 1
    joined = [7, 8, 9]
    engine.submit(Request("p2", joined, greedy(5), resume_id="p"))
    (second,) = engine.run_until_done()
    assert second.num_cached_tokens == len(parent) + 10 - 1  # only the joined ids (+ the pending token) prefilled
    assert second.output_ids == hf_greedy(model, parent + first.output_ids + joined, 5)


def test_rows_shrink_again_when_the_queue_waits_for_slots(model, make_engine):
    engine = make_engine(kv_memory=256 * PER_POSITION, max_batch_size=8)
    engine.submit(Request("long", random_prompts((100,), seed=22)[0], greedy(3)))
    engine.run_until_done()
    assert engine.kv.row_len == 128
    prompts = random_prompts((4, 4, 4, 4), seed=23)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"s{i}", p, greedy(6)))
    engine.step()
    assert engine.kv.row_len == 64 and len(engine.scheduler.running) == 4  # 4 rows of 64, not 2 of 128
    out = by_id(engine.run_until_done())
    assert all(out[f"s{i}"].output_ids == hf_greedy(model, p, 6) for i, p in enumerate(prompts))


def test_n_larger_than_the_slots_of_its_prompt_length_is_an_error(make_engine):
    engine = make_engine(kv_memory=256 * PER_POSITION)
    engine.submit(Request("ok", [5, 6], greedy(2), n=4))
    with pytest.raises(ConfigError, match="^request.n: got 3; accepted: at most engine.max_batch_size and the 2"):
        engine.submit(Request("big", list(range(4, 74)), greedy(2), n=3))


def test_close_frees_the_pool(make_engine):
    engine = make_engine()
    engine.submit(Request("a", [5, 6], greedy(2), keep_cache=True))
    engine.run_until_done()
    engine.close()
    assert engine.kv is None and not engine.scheduler.suspended
