# Build vs reuse: what transformers' continuous batching (`generate_batch`, `ContinuousBatchingManager`)
# offers the APR runtime, and how fast it decodes next to apr's LocalEngine on this CPU.
#
#   .venv/bin/python benchmarks/probe_hf_continuous_batching.py           # ~1.5 min on 2 CPU cores, ~2 GB RAM
#   .venv/bin/python benchmarks/probe_hf_continuous_batching.py --quick   # ~20 s: 1 repeat, 64 new tokens
#
# Part 1 checks features through the public API (CPU, tiny random model): per-token log-probs,
# per-request stop ids, seeded sampling, n samples, continuing a finished request, submitting while
# others run. Part 2 times greedy decoding of B prompts (~128 tokens each, 128 new tokens) with
# `model.generate_batch` and with `LocalEngine`, same weights, sides interleaved A B A B, medians;
# then `generate_batch` once more with torch.compile (`default_compile_level`, B=16).
# Writes runs/bench/hf_cb.json. The paged cache is sized explicitly: left to its default on CPU,
# transformers takes 0.6 x (total RAM - own RSS) for it, whatever other processes use.
"""Probe transformers continuous batching (features + decode throughput) against apr's LocalEngine."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # two OpenMP threads on a shared CPU (see RESULTS.md)

import argparse
import json
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import cache as cb_cache

from apr.engine import LocalEngine, LocalEngineConfig, Request, SamplingParams
from apr.model.config import ModelConfig, build_model

VOCAB = 2056
OUT = Path("runs/bench/hf_cb.json")


def cb_config(num_requests: int, tokens_per_request: int, page_size: int = 256,
              **overrides) -> ContinuousBatchingConfig:
    """A paged cache holding every request at once (pages are per request) + 8 spare pages; a batch of
    8,192 tokens takes all 64 prompts of part 2 in one prefill."""
    num_blocks = num_requests * -(-tokens_per_request // page_size) + 8
    return ContinuousBatchingConfig(num_blocks=num_blocks, max_batch_tokens=8192, page_size=page_size,
                                    **overrides)


def gen_config(max_new_tokens: int, do_sample: bool = False, **overrides) -> GenerationConfig:
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0) if do_sample else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=-1,
                            pad_token_id=0, **sampling, **overrides)


def collect(manager, request_ids: list[str], timeout_s: float = 60.0) -> dict:
    """Wait for the given requests to finish; id -> GenerationOutput."""
    out, deadline = {}, time.perf_counter() + timeout_s
    while len(out) < len(request_ids) and time.perf_counter() < deadline:
        r = manager.get_result(timeout=1)
        if r is not None and r.is_finished():
            out[r.request_id] = r
    return out


def run_manager(model, prompts: list[list[int]], gen: GenerationConfig, cb: ContinuousBatchingConfig,
                per_request: dict | None = None) -> dict:
    """Submit through `ContinuousBatchingManager.add_request` (per-request kwargs allowed); collect all."""
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()
    try:
        ids = [manager.add_request(p, request_id=f"r{i}", **(per_request or {}).get(i, {}))
               for i, p in enumerate(prompts)]
        n = gen.num_return_sequences or 1
        return collect(manager, [f"{i}__child#{j}" for i in ids for j in range(n - 1)] + ids)
    finally:
        manager.stop(block=True)
        manager.destroy()


# ---- part 1: features ---------------------------------------------------------------------------

def check_logprobs(model) -> dict:
    prompt = [5, 6, 7, 8, 9]
    out = run_manager(model, [prompt], gen_config(8), cb_config(1, 64, return_logprobs=True))["r0"]
    full = torch.tensor([prompt + out.generated_tokens])  # (1, T)
    with torch.inference_mode():
        logits = model(full).logits[0, len(prompt) - 1:-1].float()  # (8, V)
    ref = torch.log_softmax(logits, -1).gather(1, full[0, len(prompt):, None]).squeeze(1)  # (8,)
    err = (torch.tensor(out.logprobs) - ref).abs().max().item()
    return {"num_logprobs": len(out.logprobs), "max_abs_err_vs_full_forward": err}


def check_stop_ids(model) -> dict:
    a, b = [5, 6, 7, 8, 9, 10, 11], [20, 21, 22]
    first = run_manager(model, [a], gen_config(4), cb_config(1, 64))["r0"].generated_tokens
    out = run_manager(model, [a, b], gen_config(12), cb_config(2, 64),
                      per_request={0: {"eos_token_id": first[1]}})
    return {"stop_id": first[1], "stopped_request": out["r0"].generated_tokens,
            "other_request_tokens": len(out["r1"].generated_tokens)}


def check_seeds(model) -> dict:
    a, others = [5, 6, 7, 8, 9, 10, 11], [[20, 21, 22], [30, 31], [40, 41, 42, 43]]
    gen, cb = gen_config(12, do_sample=True), lambda **kw: cb_config(4, 64, seed=0, **kw)
    alone = [run_manager(model, [a], gen, cb())["r0"].generated_tokens for _ in range(2)]
    batched = run_manager(model, [a] + others, gen, cb())["r0"].generated_tokens
    per_req = run_manager(model, [a], gen, cb(per_request_processors=True),
                          per_request={0: {"seed": 7}})["r0"]
    return {"alone_twice_equal": alone[0] == alone[1], "alone_equals_in_batch_of_4": alone[0] == batched,
            "per_request_seed_kwarg_error": per_req.error}


def check_n_samples(model) -> dict:
    out = run_manager(model, [[5, 6, 7], [20, 21]], gen_config(6, do_sample=True, num_return_sequences=3),
                      cb_config(6, 64, seed=0))
    return {"request_ids": sorted(out)}


def check_resume(model) -> dict:
    """No continue API: re-submit prompt + output + appended ids and count what the prefix cache reuses."""
    hits = []
    orig = cb_cache.PagedAttentionCache.search_prefix_match

    def spy(self, request_id, prompt_ids):
        hits.append(orig(self, request_id, prompt_ids))
        return hits[-1]

    cb_cache.PagedAttentionCache.search_prefix_match = spy
    try:
        out = {}
        for page in (16, 256):
            hits.clear()
            prompt, join = list(range(100, 140)), [7, 8, 9, 10, 11]
            cb = cb_config(2, 96, page_size=page)
            manager = model.init_continuous_batching(gen_config(30), continuous_batching_config=cb)
            manager.start()
            try:
                manager.add_request(prompt, request_id="root")
                root = collect(manager, ["root"])["root"]
                context = prompt + root.generated_tokens + join
                manager.add_request(context, request_id="resume", max_new_tokens=10)
                resumed = collect(manager, ["resume"])["resume"]
            finally:
                manager.stop(block=True)
                manager.destroy()
            with torch.inference_mode():
                ref = model.generate(torch.tensor([context]), max_new_tokens=10, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(context):].tolist()
            out[f"page_size_{page}"] = {"context_tokens": len(context), "reused_tokens": hits[-1],
                                        "equals_full_recompute": resumed.generated_tokens == ref}
        return out
    finally:
        cb_cache.PagedAttentionCache.search_prefix_match = orig


def check_streaming(model) -> dict:
    manager = model.init_continuous_batching(generation_config=gen_config(1500),
                                             continuous_batching_config=cb_config(2, 1520, page_size=16))
    manager.start()
    try:
        t0 = time.perf_counter()
        manager.add_request([5, 6, 7], request_id="long")
        time.sleep(0.2)
        manager.add_request([20, 21, 22], request_id="late", max_new_tokens=5)
        out = collect(manager, ["long", "late"])
    finally:
        manager.stop(block=True)
        manager.destroy()
    return {rid: {"start_s": round(r.lifespan[0] - t0, 2), "end_s": round(r.lifespan[1] - t0, 2)}
            for rid, r in out.items()}


FEATURES = {"logprobs": check_logprobs, "stop_ids": check_stop_ids, "seeds": check_seeds,
            "n_samples": check_n_samples, "resume": check_resume, "streaming": check_streaming}


# ---- part 2: decode throughput ------------------------------------------------------------------

def hf_decode(model, prompts: list[list[int]], num_new: int) -> dict:
    cb = cb_config(len(prompts), max(map(len, prompts)) + num_new)
    start = time.perf_counter()
    out = model.generate_batch(prompts, generation_config=gen_config(num_new), continuous_batching_config=cb)
    wall = time.perf_counter() - start
    rows = [out[f"req_{i}"].generated_tokens for i in range(len(prompts))]
    assert all(len(r) == num_new for r in rows), [len(r) for r in rows]
    return {"tokens": len(prompts) * num_new, "wall_s": wall, "rows": rows}


def local_decode(model, prompts: list[list[int]], num_new: int) -> dict:
    start = time.perf_counter()  # engine (KV cache) creation counts, as the manager's does on the HF side
    cfg = LocalEngineConfig(max_batch_size=64, max_seq_len=max(map(len, prompts)) + num_new)
    engine = LocalEngine(model, cfg)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, SamplingParams(temperature=0.0, max_new_tokens=num_new)))
    done = {c.request_id: c.output_ids for c in engine.run_until_done()}
    wall = time.perf_counter() - start
    rows = [done[f"r{i}"] for i in range(len(prompts))]
    return {"tokens": len(prompts) * num_new, "wall_s": wall, "rows": rows}


def hf_compiled(model, batch: int, num_new: int, level: int) -> dict:
    """`generate_batch` with `default_compile_level` (compiles forward + sampling): first and warm call."""
    rng = random.Random(batch)
    prompts = [[rng.randrange(4, VOCAB) for _ in range(rng.randint(120, 136))] for _ in range(batch)]
    cb = cb_config(batch, 136 + num_new, default_compile_level=level)
    walls = []
    for _ in range(2):  # the manager (and its compiled functions) persists between the two calls
        start = time.perf_counter()
        model.generate_batch(prompts, generation_config=gen_config(num_new), continuous_batching_config=cb,
                             persistent_manager=True)
        walls.append(time.perf_counter() - start)
    model.destroy_cached_continuous_batching_manager()
    return {"level": level, "first_call_s": walls[0], "warm_call_s": walls[1],
            "warm_tokens_per_s": batch * num_new / walls[1]}


def measure(model, batch: int, num_new: int, repeats: int) -> dict:
    rng = random.Random(batch)
    prompts = [[rng.randrange(4, VOCAB) for _ in range(rng.randint(120, 136))] for _ in range(batch)]
    runs = {"hf_generate_batch": [], "local": []}
    for _ in range(repeats):  # A B A B: drift on the shared machine hits both sides alike
        for name, fn in (("hf_generate_batch", hf_decode), ("local", local_decode)):
            load = os.getloadavg()[0]
            runs[name].append(fn(model, prompts, num_new) | {"loadavg_1m": load})
    rows = {k: v[0].pop("rows") for k, v in runs.items()}
    for v in runs.values():
        for r in v:
            r.pop("rows", None)
    same = sum(a == b for a, b in zip(rows["hf_generate_batch"], rows["local"]))
    med = {k: statistics.median(r["tokens"] / r["wall_s"] for r in v) for k, v in runs.items()}
    return {"tokens_per_s": med, "local_over_hf": med["local"] / med["hf_generate_batch"],
            "greedy_rows_identical": f"{same}/{batch}", "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 64 new tokens")
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--compile-level", type=int, default=1,
                        help="also time generate_batch with this default_compile_level at B=16 (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = build_model(ModelConfig.preset("tiny"), vocab_size=VOCAB).eval()
    report = {"features": {}, "decode": {}}
    if not args.skip_features:
        for name, fn in FEATURES.items():
            report["features"][name] = fn(model)
            print(name, json.dumps(report["features"][name]), flush=True)
    num_new, repeats = (64, 1) if args.quick else (128, 3)
    for batch in (16, 64):
        r = report["decode"][f"B={batch}"] = measure(model, batch, num_new, repeats)
        print(f"decode B={batch}: HF generate_batch {r['tokens_per_s']['hf_generate_batch']:,.0f} tok/s, "
              f"LocalEngine {r['tokens_per_s']['local']:,.0f} tok/s, local/HF {r['local_over_hf']:.2f}x, "
              f"greedy rows identical {r['greedy_rows_identical']}", flush=True)
    if args.compile_level:
        r = report["decode"]["B=16 compiled"] = hf_compiled(model, 16, num_new, args.compile_level)
        print(f"decode B=16, HF compile level {r['level']}: first call {r['first_call_s']:.1f} s, "
              f"warm {r['warm_tokens_per_s']:,.0f} tok/s", flush=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    command = "python benchmarks/probe_hf_continuous_batching.py" + " --quick" * args.quick
    report["meta"] = {"command": command, "commit": git.stdout.strip(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "machine": f"{platform.machine()} cpus={os.cpu_count()}", "new_tokens": num_new,
                      "repeats": repeats}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
