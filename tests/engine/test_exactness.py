"""The local engine against references: HF `generate` (greedy) and a full-recompute forward."""

from __future__ import annotations

import pytest
import torch

from apr.engine import Request, SamplingParams
from apr.model.config import ModelConfig, build_model
from tests.engine._helpers import VOCAB, by_id, full_logprobs, hf_greedy, random_prompts, tiny_model

LENGTHS = (1, 3, 7, 12, 5, 20, 2, 9)


def test_greedy_matches_hf_generate_for_mixed_length_batch(model, make_engine):
    prompts = random_prompts(LENGTHS)
    engine = make_engine(max_batch_size=8)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, SamplingParams(temperature=0.0, max_new_tokens=24)))
    out = by_id(engine.run_until_done())
    outputs = set()
    for i, p in enumerate(prompts):
        assert out[f"r{i}"].output_ids == hf_greedy(model, p, 24), f"prompt {i}"
        assert out[f"r{i}"].finish_reason == "length"
        outputs.add(tuple(out[f"r{i}"].output_ids))
    assert len(outputs) == len(prompts), "degenerate model: prompts decode alike"
    # all prompts were prefilled together, then decoded together
    assert engine.stats.num_forward_calls == 24


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_new_tokens=20),
    SamplingParams(temperature=1.0, max_new_tokens=20, seed=1),
    SamplingParams(temperature=0.7, top_k=10, top_p=0.9, max_new_tokens=20, seed=2),
])
def test_logprobs_equal_full_recompute(model, make_engine, params):
    prompts = random_prompts(LENGTHS, seed=1)
    engine = make_engine(max_batch_size=4)  # 8 prompts through 4 rows: later ones join mid-run
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, params))
    out = by_id(engine.run_until_done())
    for i, p in enumerate(prompts):
        c = out[f"r{i}"]
        ref = full_logprobs(model, p, c.output_ids, params.temperature)  # the sampled (tempered) distribution
        assert max(abs(a - b) for a, b in zip(ref, c.logprobs)) < 1e-4


def test_right_padded_prefill_of_continuations_matches_recompute(model, make_engine):
    """Continuations with different kept lengths and appended lengths share one prefill forward."""
    engine = make_engine(max_batch_size=8)
    prompts = random_prompts((4, 11, 2, 17), seed=2)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"a{i}", p, greedy, keep_cache=True))
    first = by_id(engine.run_until_done())
    appended = random_prompts((1, 9, 3, 0), seed=3)
    for i, extra in enumerate(appended):
        engine.submit(Request(f"b{i}", extra, greedy, resume_id=f"a{i}"))
    calls = engine.stats.num_forward_calls
    second = by_id(engine.run_until_done())
    assert engine.stats.num_forward_calls == calls + 6  # one prefill for all four, then 5 decodes
    for i, p in enumerate(prompts):
        context = p + first[f"a{i}"].output_ids + appended[i]
        assert second[f"b{i}"].output_ids == hf_greedy(model, context, 6)
        ref = full_logprobs(model, context, second[f"b{i}"].output_ids)
        assert max(abs(a - b) for a, b in zip(ref, second[f"b{i}"].logprobs)) < 1e-4


def test_bfloat16_runs_and_tracks_fp32(make_engine):
    from apr.engine import LocalEngine, LocalEngineConfig

    model = tiny_model()
    engine = LocalEngine(model, LocalEngineConfig(max_batch_size=4, max_seq_len=64, dtype="bfloat16"))
    assert engine.kv.k.dtype == torch.bfloat16
    prompt = random_prompts((6,), seed=4)[0]
    engine.submit(Request("a", prompt, SamplingParams(temperature=0.0, max_new_tokens=8)))
    (c,) = engine.run_until_done()
    assert len(c.output_ids) == 8 and all(0 <= t < VOCAB for t in c.output_ids)
    ref = full_logprobs(model, prompt, c.output_ids)  # the bf16 model itself
    assert max(abs(a - b) for a, b in zip(ref, c.logprobs)) < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_greedy_matches_hf_on_cuda():
    from apr.engine import LocalEngine, LocalEngineConfig

    model = tiny_model().cuda()
    # fp32: the CUDA default is bf16; graphs on (the default) for the decode steps
    cfg = LocalEngineConfig(max_batch_size=8, max_seq_len=128, device="cuda", dtype="float32")
    engine = LocalEngine(model, cfg)
    prompts = random_prompts(LENGTHS)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, SamplingParams(temperature=0.0, max_new_tokens=16)))
    out = by_id(engine.run_until_done())
    for i, p in enumerate(prompts):
        x = torch.tensor([p], device="cuda")
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
        assert out[f"r{i}"].output_ids == ref


def test_from_pretrained_loads_a_saved_model(model, tmp_path):
    from apr.engine import LocalEngine

    model.save_pretrained(tmp_path)
    engine = LocalEngine.from_pretrained(str(tmp_path), max_batch_size=2, max_seq_len=64)
    prompt = random_prompts((5,), seed=6)[0]
    engine.submit(Request("a", prompt, SamplingParams(temperature=0.0, max_new_tokens=6)))
    assert engine.run_until_done()[0].output_ids == hf_greedy(model, prompt, 6)


def _rope_model(max_positions: int = 4096):
    cfg = ModelConfig(name="test", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                      max_position_embeddings=max_positions, init_std=0.5)
    return build_model(cfg, vocab_size=VOCAB, seed=3).eval()


def test_bf16_engine_builds_rope_tables_from_fp32_angles_and_leaves_the_callers_model_alone():
    # review of the GPU path (issue 23 item 1): `model.to(bfloat16)` cast the rotary inv_freq buffer, so
    # the tables were cos/sin of bf16 frequencies (0.3 off at position 3,071 for head_dim 32), and the
    # caller's model was cast in place
    from apr.engine import LocalEngine, LocalEngineConfig

    model = _rope_model()
    engine = LocalEngine(model, LocalEngineConfig(max_batch_size=2, max_seq_len=3072, dtype="bfloat16"))
    assert engine.runner.cos.dtype == torch.bfloat16
    head_dim = 128 // 4
    inv_freq = 1.0 / (model.config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(3072, dtype=torch.float64)[:, None] * inv_freq[None]  # (T, D/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    # bf16 rounding of a value in [-1, 1] (at most 2^-9) plus fp32 angles (~3e-4 rad at position 3,071);
    # bf16 frequencies were 0.54 off here
    tol = 2 ** -9 + 5e-4
    assert (engine.runner.cos.double() - cos).abs().max().item() <= tol
    sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
    assert (engine.runner.sin_signed.double() - sin).abs().max().item() <= tol
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_bf16_engine_logprobs_far_into_a_thread_track_the_fp32_learner_as_closely_as_near_its_start():
    from apr.engine import LocalEngine, LocalEngineConfig

    model = _rope_model()
    engine = LocalEngine(model, LocalEngineConfig(max_batch_size=4, max_seq_len=3072, dtype="bfloat16"))
    gaps = {}
    for name, length in (("near", 60), ("far", 2900)):
        prompts = random_prompts((length,) * 3, seed=length)
        for i, p in enumerate(prompts):
            engine.submit(Request(f"{name}{i}", p, SamplingParams(temperature=0.0, max_new_tokens=8)))
        out = by_id(engine.run_until_done())
        gaps[name] = max(max(abs(a - b) for a, b in zip(full_logprobs(model, p, out[f"{name}{i}"].output_ids),
                                                       out[f"{name}{i}"].logprobs))
                         for i, p in enumerate(prompts))
    # bf16 weights and activations cost the same anywhere in a thread; angles from bf16 frequencies did not
    assert gaps["far"] <= 2 * gaps["near"] + 0.05, gaps
