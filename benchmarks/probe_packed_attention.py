# SFT step time of the quickstart recipe's shape (tiny model, 8 packed rows of 512 tokens, 2 threads, the
# precision `auto` gives here) with transformers' sdpa against `sdpa_packed` (apr.model.attention: each
# packed sequence attended alone, in length buckets), on real packed batches of an N=3 APR data directory.
#
#   .venv/bin/python benchmarks/probe_packed_attention.py runs/bench/learn/data     # ~2 min on 2 CPU cores
#
# Both models start from the same weights and see the same 25 batches; the sides alternate A B A B B A, and
# each prints the median forward+backward+step time and the tokens/s over its last 20 steps.
"""sdpa vs sdpa_packed SFT step time on this machine."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from probe_sft_compile import run  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from transformers import AutoTokenizer  # noqa: E402

from apr.config import from_dict  # noqa: E402
from apr.model.hf import build_for_tokenizer  # noqa: E402
from apr.sft.config import SFTConfig  # noqa: E402
from apr.sft.packing import PackedLoader  # noqa: E402
from apr.sft.trainer import prepare_data  # noqa: E402
from apr.train.device import resolve_precision  # noqa: E402


def main() -> None:
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/bench/learn/data"
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(f"{data_dir}/tokenizer")
    cfg = from_dict(SFTConfig, {"model": {"name": "tiny"}, "data": {"dir": data_dir, "solver": "apr", "max_seq_len": 512,
                                                                    "solved_only": True}}, "")
    precision = resolve_precision("auto", torch.device("cpu"))
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)
    data = prepare_data(cfg, tok)
    loader = PackedLoader(data.train, 512, tok.pad_token_id, 8, 1, 0, 0, 1)
    batches = [loader.step_batches(0, i)[0] for i in range(25)]
    models, opts = {}, {}
    for impl in ("sdpa", "sdpa_packed"):
        mcfg = from_dict(SFTConfig, {"model": {"name": "tiny", "attn_implementation": impl}}, "").model
        models[impl] = build_for_tokenizer(mcfg, tok, seed=0).train()
        opts[impl] = torch.optim.AdamW(models[impl].parameters(), 1e-3)
    print(f"precision {precision}; 8 x 512-token rows; {sum(b.num_tokens for b in batches) / len(batches):,.0f} "
          "tokens a step", flush=True)
    for impl in ("sdpa", "sdpa_packed", "sdpa", "sdpa_packed", "sdpa_packed", "sdpa"):
        step_s, tps = run(models[impl], opts[impl], batches, autocast)
        print(f"{impl}: median step {step_s:.3f} s, {tps:,.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
