# SFT step time of the quickstart recipe (tiny model, 16 packed rows of 512 tokens, bf16 autocast,
# AdamW), eager vs torch.compile, on real packed batches of an N=3 APR data directory.
#
#   .venv/bin/python benchmarks/probe_sft_compile.py runs/quickstart/data     # ~2.5 min on 2 CPU cores
#
# Both models start from the same weights; the compiled one first runs 25 steps to compile (timed),
# then the two sides alternate A B A B, 25 steps each, and each prints the median step time and the
# tokens/s over its last 20 steps.
"""Eager vs torch.compile SFT step time on this machine."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from apr.config import from_dict  # noqa: E402
from apr.model.hf import build_for_tokenizer  # noqa: E402
from apr.sft.config import SFTConfig  # noqa: E402
from apr.sft.packing import PackedLoader  # noqa: E402
from apr.sft.trainer import prepare_data  # noqa: E402
from apr.tokenizer import build_tokenizer  # noqa: E402


def run(model, opt, batches, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16)) -> tuple[float, float]:
    """Median step time and tokens/s over all but the first 5 of `batches` (one optimizer step each)."""
    times = []
    for b in batches:
        t = time.perf_counter()
        with autocast():
            out = model(**b.model_inputs(), num_items_in_batch=torch.tensor(max(b.num_targets, 1)))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:]), sum(b.num_tokens for b in batches[5:]) / sum(times[5:])


def main() -> None:
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart/data"
    torch.set_num_threads(2)
    tok = build_tokenizer()
    cfg = from_dict(SFTConfig, {"model": {"name": "tiny"}, "data": {"dir": data_dir, "solver": "apr", "max_seq_len": 512},
                                "train": {"batch_rows": 16}}, "")
    data = prepare_data(cfg, tok)
    loader = PackedLoader(data.train, 512, tok.pad_token_id, 16, 1, 0, 0, 1)
    batches = [loader.step_batches(0, i)[0] for i in range(25)]
    eager = build_for_tokenizer(cfg.model, tok, seed=0).train()
    base = build_for_tokenizer(cfg.model, tok, seed=0).train()
    compiled = torch.compile(base)
    opt_e = torch.optim.AdamW(eager.parameters(), 1e-3)
    opt_c = torch.optim.AdamW(base.parameters(), 1e-3)
    t = time.perf_counter()
    run(compiled, opt_c, batches)
    print(f"compiled warm-up, 25 steps incl. compiling: {time.perf_counter() - t:.1f} s", flush=True)
    for side in ("eager", "compiled", "eager", "compiled"):
        step_s, tps = run(eager, opt_e, batches) if side == "eager" else run(compiled, opt_c, batches)
        print(f"{side}: median step {step_s:.3f} s, {tps:,.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
