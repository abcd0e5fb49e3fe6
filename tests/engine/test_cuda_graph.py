"""Fixed-shape decode (the CUDA-graph path): buckets, padding rows, and exactness.

On CPU the fixed-shape forward runs eagerly, which checks everything but capture and replay;
the `gpu` test replays real graphs.
"""

from __future__ import annotations

import pytest
import torch

from apr.engine import LocalEngine, LocalEngineConfig, Request, SamplingParams
from apr.engine.cuda_graph import StaticDecode, bucket_sizes, pick_bucket
from tests.engine._helpers import by_id, full_logprobs, hf_greedy, random_prompts, tiny_model

LENGTHS = (5, 12, 3, 9, 7)


def test_buckets_cover_every_batch_size():
    assert bucket_sizes(1) == [1] and bucket_sizes(8) == [1, 2, 4, 8] and bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    for max_batch in (1, 5, 16, 17, 64, 100):
        sizes = bucket_sizes(max_batch)
        for num in range(1, max_batch + 1):
            bucket = pick_bucket(num, sizes)
            assert num <= bucket <= max_batch and (bucket == sizes[0] or num > sizes[sizes.index(bucket) - 1])


def test_dtype_defaults_to_bf16_on_cuda_only():
    assert LocalEngineConfig().dtype == "float32"
    assert LocalEngineConfig(device="cuda").dtype == "bfloat16"  # config only: nothing is allocated
    assert LocalEngineConfig(device="cuda", dtype="float32").dtype == "float32"


def run_workload(engine, prompts):
    """Kept parents in rows beyond the decode batch, then resumed: padding must not touch their KV."""
    for i, p in enumerate(prompts):
        engine.submit(Request(f"a{i}", p, SamplingParams(temperature=0.0, max_new_tokens=3 + 2 * i),
                              keep_cache=i < 2))
    first = by_id(engine.run_until_done())
    for i, p in enumerate(prompts[2:]):  # 3 rows decode (bucket 4) while 2 parents are suspended
        engine.submit(Request(f"b{i}", p, SamplingParams(temperature=0.0, max_new_tokens=70)))
    second = by_id(engine.run_until_done())  # 70 new tokens: rows grow from 64 to 128 on the way
    for i in range(2):
        engine.submit(Request(f"c{i}", [7, 8], SamplingParams(temperature=0.0, max_new_tokens=6), resume_id=f"a{i}"))
    third = by_id(engine.run_until_done())
    return first, second, third


def test_fixed_shape_decode_matches_eager_and_hf(model):
    prompts = random_prompts(LENGTHS, seed=30)
    outs = []
    for is_static in (False, True):
        engine = LocalEngine(model, LocalEngineConfig(max_batch_size=8, max_seq_len=128))
        if is_static:  # what CUDA would capture, run eagerly
            engine.static_decode = StaticDecode(engine.runner, engine.kv, 8, capture=False)
        outs.append(run_workload(engine, prompts))
    assert engine.stats.num_kv_resizes > 0 and engine.static_decode.num_steps > 70
    eager, static = outs
    for a, b in zip(eager, static):
        assert {k: c.output_ids for k, c in a.items()} == {k: c.output_ids for k, c in b.items()}
        for k in a:
            assert max((abs(x - y) for x, y in zip(a[k].logprobs, b[k].logprobs)), default=0) < 1e-4
    first, second, third = static
    for i, p in enumerate(prompts):
        assert first[f"a{i}"].output_ids == hf_greedy(model, p, 3 + 2 * i)
    for i, p in enumerate(prompts[2:]):
        assert second[f"b{i}"].output_ids == hf_greedy(model, p, 70)
    for i in range(2):
        context = prompts[i] + first[f"a{i}"].output_ids + [7, 8]
        assert third[f"c{i}"].num_cached_tokens > 0 and third[f"c{i}"].output_ids == hf_greedy(model, context, 6)
        ref = full_logprobs(model, context, third[f"c{i}"].output_ids)
        assert max(abs(x - y) for x, y in zip(ref, third[f"c{i}"].logprobs)) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager_and_hf_generate():
    model = tiny_model().cuda()
    prompts = random_prompts(LENGTHS, seed=31)
    outs = []
    for graphs in (False, True):
        engine = LocalEngine(model, LocalEngineConfig(max_batch_size=8, max_seq_len=128, device="cuda",
                                                      dtype="float32", cuda_graphs=graphs))
        assert (engine.static_decode is not None) == graphs
        outs.append(run_workload(engine, prompts))
    num_captures = engine.static_decode.num_captures
    assert num_captures >= 2  # several buckets and row lengths
    engine.runner.refresh_weights()  # replaced parameters: the graphs are captured again
    engine.submit(Request("again", prompts[0], SamplingParams(temperature=0.0, max_new_tokens=4)))
    assert engine.run_until_done()[0].output_ids[:3] == outs[0][0]["a0"].output_ids  # a0 made 3 tokens
    assert engine.static_decode.num_captures > num_captures
    eager, graphed = outs
    for a, b in zip(eager, graphed):
        assert {k: c.output_ids for k, c in a.items()} == {k: c.output_ids for k, c in b.items()}
    for i, p in enumerate(prompts[2:]):
        x = torch.tensor([p], device="cuda")
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=70, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
        assert graphed[1][f"b{i}"].output_ids == ref
    bf16 = LocalEngine(tiny_model().cuda(), LocalEngineConfig(max_batch_size=8, max_seq_len=128, device="cuda"))
    assert bf16.kv.k.dtype == torch.bfloat16 and bf16.static_decode is not None
    bf16.submit(Request("x", prompts[0], SamplingParams(temperature=0.0, max_new_tokens=8)))
    assert len(bf16.run_until_done()[0].output_ids) == 8
