"""SFT trainer throughput against a bare training loop, and packing efficiency.

    python benchmarks/bench_sft.py [--models tiny small] [--steps 8] [--repeats 3]   # ~2-3 min, 2 CPU cores
    (make bench-sft)

Throughput: the `Trainer` (data collation, loss normalisation, clipping, schedule, logging, timers)
against a bare `forward / backward / AdamW step` loop over the SAME model config and the SAME
packed batches, bf16 autocast, sides interleaved A B A B, medians of tokens/s (non-padding tokens
per second of step time; the first 2 steps of each side are warm-up and not counted).
Packing: share of non-padding tokens in an epoch of packed rows, per solver and window.
Writes runs/bench/sft.json and runs/bench/sft.md.
"""

from __future__ import annotations

import os

# Before torch loads libgomp: spinning OpenMP threads collapse when other processes share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

WARMUP_STEPS = 2


def make_data(out: Path, num_numbers: int, num_train: int) -> Path:
    from apr.datagen.build import DataConfig, generate_dataset
    from apr.search import SearchConfig
    from apr.task import CountdownConfig

    if not (out / "train" / "apr.jsonl").is_file():
        task = CountdownConfig(num_numbers=num_numbers, max_number=30 if num_numbers == 3 else 99)
        searches = {"sosp": SearchConfig("sosp"), "apr": SearchConfig("apr", promising_prob=0.9)}
        generate_dataset(task, searches, DataConfig(out_dir=str(out), num_train=num_train, num_val=16, num_test=0,
                                                    progress=False), _tok_cfg())
    return out


def _tok_cfg():
    from apr.tokenizer import TokenizerConfig

    return TokenizerConfig()


def sft_config(data_dir: Path, run_dir: Path, model: str, row_len: int, batch_rows: int, steps: int):
    from apr.config import from_dict
    from apr.sft import SFTConfig

    return from_dict(SFTConfig, {
        "model": {"name": model}, "data": {"dir": str(data_dir), "max_seq_len": row_len, "max_val_records": 4},
        "train": {"max_steps": steps, "batch_rows": batch_rows}, "eval": {"every_steps": 0, "num_problems": 0},
        "checkpoint": {"every_steps": 0}, "log": {"every_steps": 1, "progress": False},
        "wandb": {"mode": "disabled"}, "run_dir": str(run_dir)}, "")


def trainer_side(cfg, tokenizer, data) -> float:
    """Tokens/s of the Trainer's steps after warm-up (step time covers data + fwd/bwd + optimizer)."""
    from apr.sft import Trainer
    from apr.sft.metrics import read_metrics

    Trainer(cfg, tokenizer, data=data).fit()
    rows = [r for r in read_metrics(cfg.run_dir) if "train/loss" in r][WARMUP_STEPS:]
    return sum(r["train/tokens"] for r in rows) / sum(r["time/step_s"] for r in rows)


def bare_side(cfg, tokenizer, batches) -> float:
    """Tokens/s of a bare loop: same model, same batches, bf16 autocast, AdamW, nothing else."""
    import torch

    from apr.model import build_for_tokenizer

    model = build_for_tokenizer(cfg.model, tokenizer, seed=cfg.seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    tokens, seconds = 0, 0.0
    for i, batch in enumerate(batches):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch.model_inputs()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= WARMUP_STEPS:
            seconds += time.perf_counter() - t
            tokens += batch.num_tokens
    return tokens / seconds


def throughput(model: str, data_dir: Path, row_len: int, batch_rows: int, steps: int, repeats: int) -> dict:
    from transformers import AutoTokenizer

    from apr.model import ModelConfig
    from apr.sft.packing import PackedLoader
    from apr.sft.trainer import prepare_data

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sft_config(data_dir, Path(tmp) / "run", model, row_len, batch_rows, steps)
        cfg.model = ModelConfig.preset(model)  # conf/model/<name>.yaml holds the same (tests/model)
        data = prepare_data(cfg, tok)  # tokenised once, shared by every repeat
        loader = PackedLoader(data.train, row_len, tok.pad_token_id, batch_rows, 1, cfg.seed)
        batches = [loader.step_batches(0, s)[0] for s in range(steps)]  # the trainer's own first batches
        sides: dict[str, list[float]] = {"trainer": [], "bare": []}
        for _ in range(repeats):
            sides["trainer"].append(trainer_side(cfg, tok, data))
            sides["bare"].append(bare_side(cfg, tok, batches))
    med = {k: statistics.median(v) for k, v in sides.items()}
    return {"model": model, "row_len": row_len, "batch_rows": batch_rows, "steps": steps, "repeats": repeats,
            "trainer_tokens_per_s": round(med["trainer"]), "bare_tokens_per_s": round(med["bare"]),
            "ratio": round(med["trainer"] / med["bare"], 3),
            "all": {k: [round(x) for x in v] for k, v in sides.items()}}


def packing(data_dir: Path, label: str, windows: list[int]) -> list[dict]:
    from transformers import AutoTokenizer

    from apr.sft.config import SFTDataConfig
    from apr.sft.data import fit_to_window, load_split
    from apr.sft.packing import PackedLoader

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    out = []
    for solver in ("sosp", "apr"):
        seqs = load_split(SFTDataConfig(dir=str(data_dir), solver=solver), "train", tok, None)
        for w in windows:
            cfg = SFTDataConfig(dir=str(data_dir), solver=solver, max_seq_len=w, max_dropped_frac=1.0)
            kept, report = fit_to_window(seqs, cfg, "train")
            if not kept:
                continue
            rows = PackedLoader(kept, w, tok.pad_token_id, 1, 1, seed=0).epoch_rows(0)
            eff = sum(len(kept[i]) for r in rows for i in r) / (len(rows) * w)
            out.append({"data": label, "solver": solver, "window": w, "threads": len(kept),
                        "dropped": report.num_dropped, "packing": round(eff, 4)})
    return out


def to_markdown(result: dict) -> str:
    md = ["| model | rows x window | trainer tok/s | bare loop tok/s | trainer / bare |", "|---|---|---|---|---|"]
    for r in result["throughput"]:
        md.append(f"| {r['model']} | {r['batch_rows']} x {r['row_len']} | {r['trainer_tokens_per_s']:,} | "
                  f"{r['bare_tokens_per_s']:,} | {r['ratio']:.1%} |")
    md += ["", "| data | solver | window | threads kept (dropped) | non-padding share |", "|---|---|---|---|---|"]
    for p in result["packing"]:
        md.append(f"| {p['data']} | {p['solver']} | {p['window']} | {p['threads']:,} ({p['dropped']}) | "
                  f"{p['packing']:.1%} |")
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=8, help="steps per side and repeat (2 of them warm-up)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--row-len", type=int, default=512)
    ap.add_argument("--n4-problems", type=int, default=300, help="N=4 training problems for packing (0: skip)")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    n3 = make_data(out / "sft_data_n3", 3, 2000)
    result = {"throughput": [throughput(m, n3, args.row_len, args.batch_rows, args.steps, args.repeats)
                             for m in args.models],
              "packing": packing(n3, "N=3, 2,000 problems", [512, 1024])}
    if args.n4_problems:
        n4 = make_data(out / "sft_data_n4", 4, args.n4_problems)
        result["packing"] += packing(n4, f"N=4, {args.n4_problems} problems", [1024, 2048, 3072])
    result.update(commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip(),
                  machine=f"{platform.machine()} python {platform.python_version()}, {os.cpu_count()} CPUs",
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), wall_s=round(time.perf_counter() - t0, 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft.json").write_text(json.dumps(result, indent=2))
    md = to_markdown(result)
    (out / "sft.md").write_text(md)
    print(md)
    print(f"wall {result['wall_s']} s; wrote {out / 'sft.json'}")


if __name__ == "__main__":
    main()
