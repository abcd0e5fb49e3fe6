"""Slot bookkeeping under churn: rows stay in batch order and every greedy token stays exact."""

from __future__ import annotations

import random

import torch

from apr.engine import Request, SamplingParams
from apr.engine.sequence import SeqStatus


def check_invariants(engine) -> None:
    sched, kv = engine.scheduler, engine.kv
    for row, seq in enumerate(sched.running):
        assert seq.slot == row and kv.owner[row] is seq and seq.status is SeqStatus.RUNNING
    for seq in sched.suspended.values():
        assert seq.status is SeqStatus.SUSPENDED
        assert seq.slot is None or kv.owner[seq.slot] is seq
    held = [s for s in kv.owner if s is not None]
    assert len(held) == len({id(s) for s in held})
    rows = engine.rows  # exactly the running sequences have per-row state, in their own rows, and it agrees
    for row, seq in enumerate(sched.running):
        assert seq.rows is rows and seq.row == row and rows.seqs[row] is seq
        assert rows.position[row] == seq.num_cached == seq.num_tokens - 1
        assert rows.inputs(row + 1)[0][row] == seq.token_ids[-1] and rows.num_generated[row] == seq.num_generated
    for seq in list(sched.suspended.values()) + [s for g in sched.waiting for s in g]:
        assert seq.rows is None
    running = sched.running
    assert rows.num_with_stops == sum(bool(s.params.stop_token_ids) for s in running)
    # the tracked values: the exact longest row, a lower bound of the tokens left before a length limit
    assert rows.max_num_tokens(len(running)) == max((s.num_tokens for s in running), default=0)
    left = [min(s.params.max_new_tokens, s.num_generated + engine.config.max_seq_len - s.num_tokens + 1)
            - s.num_generated for s in running]
    assert rows._min_left <= min(left, default=rows._min_left)


def greedy_is_exact(model, context: list[int], output: list[int]) -> bool:
    """Each greedy token is the argmax of a full forward over everything before it."""
    with torch.inference_mode():
        logits = model(torch.tensor([context + output])).logits[0]  # (T, V)
    return logits[len(context) - 1:-1].argmax(-1).tolist() == output


def test_random_workload_keeps_rows_and_outputs_exact(model, make_engine):
    rng = random.Random(0)
    engine = make_engine(max_batch_size=4, num_slots=5, max_seq_len=96, max_prefill_tokens=40,
                         attention_chunk_rows=2)
    contexts: dict[str, list[int]] = {}  # request id -> context it was generated from
    kept: dict[str, list[int]] = {}  # suspended request id -> its full token list
    num_checked = 0
    for step in range(120):
        if rng.random() < 0.5:
            rid = f"q{step}"
            max_new = rng.randint(1, 9)
            params = SamplingParams(temperature=0.0, max_new_tokens=max_new)
            keep = rng.random() < 0.7
            if kept and rng.random() < 0.3:
                parent = rng.choice(sorted(kept))
                extra = [rng.randrange(4, 100) for _ in range(rng.randint(0, 6))]
                engine.submit(Request(rid, extra, params, resume_id=parent, keep_cache=keep))
                contexts[rid] = kept.pop(parent) + extra
            else:
                prompt = [rng.randrange(4, 100) for _ in range(rng.randint(1, 12))]
                engine.submit(Request(rid, prompt, params, keep_cache=keep))
                contexts[rid] = prompt
        if kept and rng.random() < 0.05:
            engine.release(kept.popitem()[0])
        for c in engine.step():
            assert c.finish_reason == "length"
            assert greedy_is_exact(model, contexts[c.request_id], c.output_ids), c.request_id
            num_checked += 1
            if c.request_id in engine.scheduler.suspended:
                kept[c.request_id] = contexts[c.request_id] + c.output_ids
        check_invariants(engine)
    engine.run_until_done()
    check_invariants(engine)
    assert num_checked > 30 and engine.stats.num_evictions > 0 and engine.stats.num_kv_copies > 0
    assert engine.stats.num_regroups > 0


def test_rows_regrouped_by_length_for_chunked_attention_stay_exact(model, make_engine):
    from tests.engine._helpers import by_id, hf_greedy, random_prompts

    prompts = random_prompts((2, 40, 5, 60, 3, 30, 1, 50), seed=14)
    engine = make_engine(max_batch_size=8, attention_chunk_rows=2)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, SamplingParams(temperature=0.0, max_new_tokens=10)))
    engine.step()
    engine.step()  # the second step regroups: the longest rows share chunk 0, the shortest the last
    assert engine.stats.num_regroups == 1
    check_invariants(engine)
    lens = [s.num_cached for s in engine.scheduler.running]
    assert sorted(lens[:2]) == sorted(lens)[-2:] and sorted(lens[-2:]) == sorted(lens)[:2]
    out = by_id(engine.run_until_done())
    for i, p in enumerate(prompts):
        assert out[f"r{i}"].output_ids == hf_greedy(model, p, 10)


def test_admission_does_not_stall_behind_queued_resumes_that_hold_slots(model, make_engine):
    """Issue 23 item 2: with 4 slots, two kept requests, then an n=3 request, then both resumes: the n=3
    group at the head of the queue needs new slots that only the queued resumes hold (they are not
    suspended, so they were not evictable): nothing ran and `has_work()` stayed true for ever."""
    engine = make_engine(max_batch_size=4, num_slots=4, max_seq_len=64)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=3)
    for rid in ("a", "b"):
        engine.submit(Request(rid, [5, 6, 7], greedy, keep_cache=True))
    done = {c.request_id: c for c in engine.run_until_done()}
    assert set(done) == {"a", "b"} and set(engine.scheduler.suspended) == {"a", "b"}
    engine.submit(Request("c", [8, 9], SamplingParams(temperature=1.0, max_new_tokens=3, seed=1), n=3))
    engine.submit(Request("a2", [10], greedy, resume_id="a"))
    engine.submit(Request("b2", [11], greedy, resume_id="b"))
    finished = []
    for _ in range(200):
        finished += engine.step()
        check_invariants(engine)
        if not engine.has_work():
            break
    assert not engine.has_work()
    assert sorted(c.request_id for c in finished) == ["a2", "b2", "c/0", "c/1", "c/2"]
    outputs = {c.request_id: c.output_ids for c in finished}
    assert greedy_is_exact(model, [5, 6, 7] + done["a"].output_ids + [10], outputs["a2"])
