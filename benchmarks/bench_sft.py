"""SFT trainer throughput against a bare training loop, packing efficiency, and time to first step.

    python benchmarks/bench_sft.py [--models tiny small] [--steps 8] [--repeats 3] [--device cpu|cuda]
        # ~4-5 min on 2 CPU cores (make bench-sft; DEVICE=cuda make bench-sft on a GPU)
    python benchmarks/bench_sft.py --models --n4-problems 0 --ttfs-data /tmp/n4_20k   # time to first step only

Throughput: the `Trainer` (data collation, loss normalisation, clipping, schedule, logging, timers)
against a bare `forward / backward / AdamW step` loop over the SAME model config and the SAME
packed batches, bf16 autocast, sides interleaved A B A B, medians of tokens/s (non-padding tokens
per second of step time; the first 2 steps of each side are warm-up and not counted).
Packing: share of non-padding tokens in an epoch of packed rows, per solver and window.
Time to first step: a fresh process runs `Trainer.fit` for one step of the N=4 APR recipe
(`small`, one row of 2,048) and reports setup (data, model, packing) + the first step, with threads
rendered at start (`data.token_cache=false`, the old path) and read from the token cache (built
once before, not timed; its build time is reported apart), alternated A B A B, medians.
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


def sft_config(data_dir: Path, run_dir: Path, model: str, row_len: int, batch_rows: int, steps: int,
               device: str = "auto", **data):
    from apr.config import from_dict
    from apr.sft import SFTConfig

    return from_dict(SFTConfig, {
        "model": {"name": model}, "data": {"dir": str(data_dir), "max_seq_len": row_len, "max_val_records": 4, **data},
        "train": {"max_steps": steps, "batch_rows": batch_rows, "device": device},
        "eval": {"every_steps": 0, "num_problems": 0},
        "checkpoint": {"every_steps": 0}, "log": {"every_steps": 1, "progress": False},
        "wandb": {"mode": "disabled"}, "run_dir": str(run_dir)}, "")


def trainer_side(cfg, tokenizer, data) -> float:
    """Tokens/s of the Trainer's steps after warm-up (step time covers data + fwd/bwd + optimizer)."""
    from apr.sft import Trainer
    from apr.train.metrics import read_metrics

    Trainer(cfg, tokenizer, data=data).fit()
    rows = [r for r in read_metrics(cfg.run_dir) if "train/loss" in r][WARMUP_STEPS:]
    return sum(r["train/tokens"] for r in rows) / sum(r["time/step_s"] for r in rows)


def bare_side(cfg, tokenizer, batches, device: str) -> float:
    """Tokens/s of a bare loop: same model, same batches, bf16 autocast, AdamW, nothing else."""
    import torch

    from apr.model import build_for_tokenizer

    dev = torch.device(device)
    model = build_for_tokenizer(cfg.model, tokenizer, seed=cfg.seed).train().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    tokens, seconds = 0, 0.0
    for i, batch in enumerate(batches):
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(**batch.to(dev).model_inputs()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= WARMUP_STEPS:
            seconds += time.perf_counter() - t
            tokens += batch.num_tokens
    return tokens / seconds


def throughput(model: str, data_dir: Path, row_len: int, batch_rows: int, steps: int, repeats: int,
               device: str) -> dict:
    from transformers import AutoTokenizer

    from apr.model import ModelConfig
    from apr.sft.packing import PackedLoader
    from apr.sft.trainer import prepare_data

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sft_config(data_dir, Path(tmp) / "run", model, row_len, batch_rows, steps, device)
        cfg.model = ModelConfig.preset(model)  # conf/model/<name>.yaml holds the same (tests/model)
        data = prepare_data(cfg, tok)  # tokenised once, shared by every repeat
        loader = PackedLoader(data.train, row_len, tok.pad_token_id, batch_rows, 1, cfg.seed)
        batches = [loader.step_batches(0, s)[0] for s in range(steps)]  # the trainer's own first batches
        sides: dict[str, list[float]] = {"trainer": [], "bare": []}
        for _ in range(repeats):
            sides["trainer"].append(trainer_side(cfg, tok, data))
            sides["bare"].append(bare_side(cfg, tok, batches, device))
    med = {k: statistics.median(v) for k, v in sides.items()}
    return {"model": model, "row_len": row_len, "batch_rows": batch_rows, "steps": steps, "repeats": repeats,
            "device": device,
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


def ttfs_once(data_dir: Path, token_cache: bool, device: str) -> dict:
    """One start of the N=4 APR recipe's model and window (`small`, rows of 2,048; one row per step, so that
    the step itself is a small part of the figure) in this process: setup + step 1."""
    import shutil

    from transformers import AutoTokenizer

    from apr.sft import Trainer
    from apr.train.metrics import read_metrics

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    run = Path(tempfile.mkdtemp(prefix="bench_ttfs_"))
    try:
        cfg = sft_config(data_dir, run, "small", 2048, 1, 1, device, solver="apr", token_cache=token_cache,
                         max_val_records=20)
        trainer = Trainer(cfg, tok)
        trainer.fit()
        first = next(r for r in read_metrics(run) if "train/loss" in r)
        setup = trainer.times["time/setup_s"]
        return {"token_cache": token_cache, "setup_s": round(setup, 2), "first_step_s": round(first["time/step_s"], 2),
                "ttfs_s": round(setup + first["time/step_s"], 2), "threads": len(trainer.data.train)}
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _ttfs_subprocess(data_dir: Path, token_cache: bool, device: str) -> dict:
    import sys

    cmd = [sys.executable, __file__, "--ttfs-one", str(data_dir), "--device", device]
    cmd += [] if token_cache else ["--no-token-cache"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_to_first_step(data_dir: Path, repeats: int, device: str) -> dict:
    """Render-at-start against the token cache, each start a fresh process, A B A B; the cache's build apart."""
    import shutil

    for stale in data_dir.glob("*/.tokens"):
        shutil.rmtree(stale)
    t = time.perf_counter()
    build = _ttfs_subprocess(data_dir, True, device)  # this start renders into the cache
    build["wall_s"] = round(time.perf_counter() - t, 2)
    runs = {"render": [], "cache": []}
    for _ in range(repeats):
        runs["render"].append(_ttfs_subprocess(data_dir, False, device))
        runs["cache"].append(_ttfs_subprocess(data_dir, True, device))
    med = {k: statistics.median(r["ttfs_s"] for r in v) for k, v in runs.items()}
    return {"data": str(data_dir), "threads": build["threads"], "device": device, "cold_cache_start": build,
            "render_ttfs_s": med["render"], "cache_ttfs_s": med["cache"],
            "speedup": round(med["render"] / med["cache"], 2), "all": runs}


def to_markdown(result: dict) -> str:
    md = ["| model | rows x window | trainer tok/s | bare loop tok/s | trainer / bare |", "|---|---|---|---|---|"]
    for r in result["throughput"]:
        md.append(f"| {r['model']} | {r['batch_rows']} x {r['row_len']} | {r['trainer_tokens_per_s']:,} | "
                  f"{r['bare_tokens_per_s']:,} | {r['ratio']:.1%} |")
    md += ["", "| data | solver | window | threads kept (dropped) | non-padding share |", "|---|---|---|---|---|"]
    for p in result["packing"]:
        md.append(f"| {p['data']} | {p['solver']} | {p['window']} | {p['threads']:,} ({p['dropped']}) | "
                  f"{p['packing']:.1%} |")
    if "ttfs" in result:
        t = result["ttfs"]
        md += ["", f"Time to first step (setup + step 1; {t['threads']:,} APR threads of {t['data']}, `small`, "
               f"{t['device']}; medians of {len(t['all']['cache'])} fresh processes, A B A B):", "",
               "| threads from | time to first step |", "|---|---|",
               f"| rendered at start (data.token_cache=false) | {t['render_ttfs_s']:.1f} s |",
               f"| token cache (warm) | {t['cache_ttfs_s']:.1f} s |",
               f"| token cache, first start (builds it) | {t['cold_cache_start']['ttfs_s']:.1f} s |"]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["tiny", "small"], help="none: skip the throughput part")
    ap.add_argument("--steps", type=int, default=8, help="steps per side and repeat (2 of them warm-up)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--row-len", type=int, default=512)
    ap.add_argument("--n4-problems", type=int, default=300, help="N=4 training problems for packing (0: skip)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the trainer, the bare loop and time to first step")
    ap.add_argument("--ttfs-data", default=None,
                    help="data dir for time to first step (default: the N=4 packing data); 'none': skip")
    ap.add_argument("--ttfs-repeats", type=int, default=2)
    ap.add_argument("--ttfs-one", default=None, help=argparse.SUPPRESS)  # one start, JSON on stdout
    ap.add_argument("--no-token-cache", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ttfs_one:
        print(json.dumps(ttfs_once(Path(args.ttfs_one), not args.no_token_cache, args.device)))
        return
    out = Path(args.out)
    t0 = time.perf_counter()
    n3 = make_data(out / "sft_data_n3", 3, 2000) if args.models else None
    result = {"throughput": [throughput(m, n3, args.row_len, args.batch_rows, args.steps, args.repeats, args.device)
                             for m in args.models],
              "packing": packing(n3, "N=3, 2,000 problems", [512, 1024]) if args.models else []}
    n4 = None
    if args.n4_problems:
        n4 = make_data(out / "sft_data_n4", 4, args.n4_problems)
        result["packing"] += packing(n4, f"N=4, {args.n4_problems} problems", [1024, 2048, 3072])
    ttfs_dir = n4 if args.ttfs_data is None else None if args.ttfs_data == "none" else Path(args.ttfs_data)
    if ttfs_dir is not None:
        result["ttfs"] = time_to_first_step(ttfs_dir, args.ttfs_repeats, args.device)
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
