"""`make gpu-check`: the whole pipeline in miniature on one GPU, one summary table and JSON at the end.

    make gpu-check                     # MINUTES=8 (the one knob): ~8 min on one H200, writes runs/gpu_check/
    python benchmarks/gpu_check.py --minutes 8 --out runs/gpu_check      # the same, without make
    python benchmarks/gpu_check.py --toy --out /tmp/gpu_check            # CPU, toy sizes, ~1-2 min (tests run it)

Stages, each a command of the project run as its own process, in order; the first that fails stops the
check with `gpu-check FAILED at stage <name>` and the tail of its log (every log is in <out>/logs/):
  data   N=4 Countdown (the paper's numbers 1-99), SoS+ and APR traces     apr.cli.data
  sft    SoS+ and APR SFT of `small`, side by side, each `train.max_minutes`   apr.cli.sft (x2 at once)
  eval   greedy accuracy of both on the test problems at windows 512-3,072     apr.cli.eval
  grpo   five GRPO steps of the APR model (dist=none), greedy test accuracy before and after   apr.cli.rl
  engine the local engine's decode tokens/s next to HF `generate`, same model, same device, same batch
Writes <out>/gpu_check.json and <out>/gpu_check.md (the table, also printed).

Sizes at MINUTES=8 (GPU; UNMEASURED: chosen from shared/FACTS.md "The project on one GPU", where 4 SFT
runs sharing one H200 for ~4 min each reached APR 12.2% / SoS+ 0.0% on 500 test problems; the aim for
a 10-minute run is APR >= 40%, >= SoS+ + 10 points at equal window, GRPO >= +3 points): 20k problems
(~80 s of data on 16 cores), `small`, SFT MINUTES-5 minutes each (3 at MINUTES=8) at lr 1e-3 with rows
8 x 2,048 (APR) / 6 x 3,072 (SoS+), 500 test problems, 5 GRPO steps of 16 problems x G=4 at lr 5e-5.
The targets are reported (met / missed), never a failure: only errors fail the check.

On the project's GPU machine (no ray, hydra, wandb or deepspeed there; python3 has torch and
transformers): carry hydra-core, omegaconf and antlr4 as wheels. Once, here, in the repo root:
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.0
    python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI: pure Python
then run there (carry: [".whl"], timeout_s 600; stages use dist=none and wandb.mode=disabled):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py \
        --minutes 8 --out $OUT/gpu_check 2>&1 | tail -60
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "sft", "eval", "grpo", "engine")


@dataclass
class Sizes:
    """Everything the check's size depends on."""

    num_train: int
    num_val: int  # SFT's validation loss runs over these problems' traces
    num_test: int
    data_workers: int
    model: str
    sft_minutes: float
    warmup_steps: int
    apr_rows: tuple[int, int]  # (batch_rows, row length)
    sosp_rows: tuple[int, int]
    windows: tuple[int, ...]  # eval: accuracy within these per-thread windows
    eval_batch: int  # eval: problems in flight (engine batch = min(this, 256))
    rl_steps: int
    rl_problems: int  # per GRPO step
    rl_group: int
    rl_window: int
    engine_prompts: int
    engine_new_tokens: int
    threads: int = 0  # torch threads per stage process (0: torch's default)

    @property
    def max_window(self) -> int:
        return max(self.windows)


def gpu_sizes(minutes: float) -> Sizes:
    """MINUTES splits as: data ~1.5, SFT MINUTES-5 (both at once), eval ~1.5, GRPO ~1.5, engine ~0.5."""
    return Sizes(num_train=20000, num_val=100, num_test=500, data_workers=max((os.cpu_count() or 2) - 2, 1), model="small",
                 sft_minutes=max(minutes - 5.0, 1.0), warmup_steps=100, apr_rows=(8, 2048), sosp_rows=(6, 3072),
                 windows=(512, 1024, 2048, 3072), eval_batch=500, rl_steps=5, rl_problems=16, rl_group=4,
                 rl_window=2048, engine_prompts=256, engine_new_tokens=128)


def toy_sizes() -> Sizes:
    return Sizes(num_train=40, num_val=6, num_test=6, data_workers=2, model="tiny", sft_minutes=0.05, warmup_steps=1, apr_rows=(1, 2048),
                 sosp_rows=(1, 2048), windows=(128, 256), eval_batch=6, rl_steps=2, rl_problems=2, rl_group=2,
                 rl_window=128, engine_prompts=4, engine_new_tokens=8, threads=1)


class StageError(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"gpu-check FAILED at stage {stage!r}: {message}")
        self.stage = stage


def run_stage(stage: str, cmds: dict[str, list[str]], logs: Path, timeout_s: float, threads: int = 0) -> float:
    """Run the commands of one stage at once (each logging to <logs>/<name>.log); fail naming the stage.
    `threads` > 0 caps each process's torch/OpenMP threads (toy runs on busy shared cores stall otherwise)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    logs.mkdir(parents=True, exist_ok=True)
    t0, procs = time.perf_counter(), {}
    for name, cmd in cmds.items():
        log = open(logs / f"{name}.log", "w")
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for name, (proc, log) in procs.items():
        try:
            rc = proc.wait(timeout=max(timeout_s - (time.perf_counter() - t0), 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        log.close()
        if rc != 0:
            failed.append((name, rc))
    if failed:
        name, rc = failed[0]
        tail = "".join((logs / f"{name}.log").read_text().splitlines(keepends=True)[-25:])
        raise StageError(stage, f"{name} exited with {rc} (log {logs / f'{name}.log'}):\n{tail}")
    return time.perf_counter() - t0


def cli(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"apr.cli.{module}", *args]


def data_cmd(s: Sizes, out: Path) -> list[str]:
    return cli("data", "task=countdown_n4", f"data.num_train={s.num_train}", f"data.num_val={s.num_val}",
               f"data.num_test={s.num_test}", f"data.out_dir={out / 'data'}", f"data.num_workers={s.data_workers}",
               "data.progress=false")


def sft_cmd(s: Sizes, out: Path, solver: str, device: str) -> list[str]:
    rows, row_len = s.apr_rows if solver == "apr" else s.sosp_rows
    return cli("sft", f"model={s.model}", f"name=gpu_check_{solver}", f"run_dir={out / 'sft' / solver}",
               f"data.dir={out / 'data'}", f"data.solver={solver}", f"data.max_seq_len={row_len}",
               "data.max_dropped_frac=1.0", "data.solved_only=true", "model.number_init=numeric",
               "optim.name=muon", "optim.lr=1e-3", "optim.embed_lr_scale=5", "optim.weight_decay=0",
               f"optim.warmup_steps={s.warmup_steps}",
               f"train.max_minutes={s.sft_minutes}", "train.max_steps=null", f"train.batch_rows={rows}",
               "train.grad_accum_steps=1", f"train.device={device}", "eval.every_steps=0", "eval.num_problems=0",
               "checkpoint.every_steps=0", "log.progress=false", "wandb.mode=disabled", "overwrite=true")


def eval_cmd(s: Sizes, out: Path, device: str) -> list[str]:
    windows = ",".join(str(w) for w in s.windows)
    return cli("eval", f"models.sosp={out / 'sft' / 'sosp' / 'final'}", f"models.apr={out / 'sft' / 'apr' / 'final'}",
               f"data_dir={out / 'data'}", f"num_problems={s.num_test}", f"out_dir={out / 'eval'}",
               f"eval.max_thread_tokens={s.max_window}", f"eval.windows=[{windows}]", "eval.temperatures=[0.0]",
               "eval.cons_pass_n=0", f"eval.batch_size={s.eval_batch}", "eval.progress=false", "plots=false",
               f"engine.device={device}", f"++engine.max_batch_size={min(s.eval_batch, 256)}")


def grpo_cmd(s: Sizes, out: Path, device: str) -> list[str]:
    return cli("rl", f"init={out / 'sft' / 'apr' / 'final'}", "name=gpu_check_grpo", f"run_dir={out / 'rl'}",
               f"data.dir={out / 'data'}", "dist=none", f"train.steps={s.rl_steps}",
               f"train.batch_problems={s.rl_problems}", f"algo.group_size={s.rl_group}", "train.inner_steps=2",
               "optim.lr=5e-5", "loss.kl_coef=0.001", f"train.device={device}",
               f"train.precision={'bf16' if device == 'cuda' else 'fp32'}",
               f"rollout.runtime.max_thread_tokens={s.rl_window}", f"++engine.device={device}",
               f"++engine.max_seq_len={s.rl_window}",
               f"++engine.max_batch_size={min(s.rl_problems * s.rl_group * 4, 256)}",
               "rollout.eval_split=test", f"rollout.eval_problems={s.num_test}", "checkpoint.every_steps=0",
               "progress=false", "wandb.mode=disabled", "overwrite=true")


def engine_stage(s: Sizes, out: Path, device: str) -> dict:
    """Decode tokens/s of the APR model: local engine vs HF generate, same prompts, batch, device, fp32."""
    import random

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_engine import MAX_BATCH, hf_decode, local_decode

    from apr.model import load_checkpoint

    model, tok = load_checkpoint(out / "sft" / "apr" / "final")
    model = model.eval().to(device)
    rng = random.Random(0)
    prompts = [[rng.randrange(4, len(tok)) for _ in range(20)] for _ in range(s.engine_prompts)]
    local_decode(model, prompts[:2], 4)  # warm-up (allocations, kernels)
    hf_decode(model, prompts[:2], 4, MAX_BATCH)
    loc = local_decode(model, prompts, s.engine_new_tokens)
    hf = hf_decode(model, prompts, s.engine_new_tokens, MAX_BATCH)
    rates = {k: r["tokens"] / r["wall_s"] for k, r in (("local", loc), ("hf", hf))}
    return {"prompts": len(prompts), "new_tokens": s.engine_new_tokens, "batch": MAX_BATCH,
            "local_tokens_per_s": round(rates["local"]), "hf_tokens_per_s": round(rates["hf"]),
            "ratio": round(rates["local"] / rates["hf"], 2)}


# ---- results --------------------------------------------------------------------------------------

def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()] if path.is_file() else []


def sft_result(out: Path, solver: str) -> dict:
    run = out / "sft" / solver
    state = json.loads((run / "final" / "trainer_state.json").read_text())
    rows = _rows(run / "metrics.jsonl")
    last = lambda k: next((r[k] for r in reversed(rows) if k in r), None)  # noqa: E731
    return {"steps": state["step"], "train_minutes": round(state.get("budget", {}).get("elapsed_s", 0) / 60, 2),
            "train_loss": last("train/loss"), "val_loss": last("val/loss"), "tokens_per_s": last("train/tokens_per_s"),
            "final_lr": last("train/lr")}


def eval_result(out: Path) -> dict:
    summary = json.loads((out / "eval" / "metrics.json").read_text())
    res = {}
    for name, m in summary["models"].items():
        greedy = next(st for st in m["settings"].values() if st.get("temperature") == 0.0)
        res[name] = {"accuracy": greedy["accuracy"],
                     "accuracy_vs_window": {str(k): v for k, v in greedy["accuracy_vs_window"].items()}}
    return res


def grpo_result(out: Path) -> dict:
    rows = _rows(out / "rl" / "metrics.jsonl")
    evals = [r for r in rows if "eval/accuracy" in r]
    steps = [r for r in rows if "time/step_s" in r]
    return {"steps": len(steps), "accuracy_before": evals[0]["eval/accuracy"] if evals else None,
            "accuracy_after": evals[-1]["eval/accuracy"] if len(evals) > 1 else None,
            "step_s": round(sum(r["time/step_s"] for r in steps) / max(len(steps), 1), 2),
            "rollout_accuracy": [round(r["rollout/accuracy"], 4) for r in steps]}


def targets(res: dict, windows: tuple[int, ...]) -> dict:
    """The aim of the issue for a 10-minute run (reported, never a failure)."""
    ev, rl = res.get("eval", {}), res.get("grpo", {})
    if "apr" not in ev or "sosp" not in ev:
        return {}
    apr, sosp = ev["apr"]["accuracy_vs_window"], ev["sosp"]["accuracy_vs_window"]
    gap = min(apr[str(w)] - sosp[str(w)] for w in windows)
    gain = (rl["accuracy_after"] - rl["accuracy_before"]) if rl.get("accuracy_after") is not None else None
    return {"apr_at_least_40": ev["apr"]["accuracy"] >= 0.40, "apr_minus_sosp_at_least_10_points": gap >= 0.10,
            "apr_minus_sosp_min_over_windows": round(gap, 4),
            "grpo_gain_at_least_3_points": gain is not None and gain >= 0.03, "grpo_gain": gain}


def to_markdown(res: dict) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    secs = res["stage_s"]
    size = "toy sizes" if res["toy"] else f"MINUTES={res['minutes']}"
    md = [f"gpu-check on {res['device_name']} ({size}), "
          f"commit {res['commit']}, {res['wall_s']:.0f} s in all", "",
          "| stage | seconds | result |", "|---|---|---|",
          f"| data | {secs.get('data', 0):.0f} | N=4, {res['sizes']['num_train']:,} train / "
          f"{res['sizes']['num_test']} test problems |"]
    for solver in ("sosp", "apr"):
        r = res.get("sft", {}).get(solver)
        if r:
            md.append(f"| sft {solver} | {secs.get('sft', 0):.0f} | {r['steps']} steps in {r['train_minutes']} min, "
                      f"train loss {r['train_loss']:.3f}, val loss {r['val_loss'] or float('nan'):.3f}, "
                      f"{r['tokens_per_s'] or 0:,.0f} tok/s, final lr {r['final_lr']:.2e} |")
    for name, r in res.get("eval", {}).items():
        by_w = ", ".join(f"{w}: {pct(a)}" for w, a in r["accuracy_vs_window"].items())
        md.append(f"| eval {name} (greedy) | {secs.get('eval', 0):.0f} | {pct(r['accuracy'])}; by window {by_w} |")
    if "grpo" in res:
        g = res["grpo"]
        md.append(f"| grpo apr | {secs.get('grpo', 0):.0f} | {g['steps']} steps ({g['step_s']} s each), greedy test "
                  f"accuracy {pct(g['accuracy_before'])} -> {pct(g['accuracy_after'])} |")
    if "engine" in res:
        e = res["engine"]
        md.append(f"| engine decode | {secs.get('engine', 0):.0f} | local {e['local_tokens_per_s']:,} tok/s vs HF "
                  f"generate {e['hf_tokens_per_s']:,} tok/s ({e['ratio']}x; {e['prompts']} prompts x "
                  f"{e['new_tokens']} tokens, batch {e['batch']}) |")
    if res.get("targets"):
        t = res["targets"]
        md += ["", f"Aims for a 10-minute run: APR >= 40%: {_yes(t['apr_at_least_40'])}; APR >= SoS+ + 10 points "
               f"at every window: {_yes(t['apr_minus_sosp_at_least_10_points'])} (min gap "
               f"{100 * t['apr_minus_sosp_min_over_windows']:.1f} points); GRPO >= +3 points: "
               f"{_yes(t['grpo_gain_at_least_3_points'])}."]
    if res.get("failed"):
        md += ["", f"**FAILED at stage {res['failed']['stage']!r}**: {res['failed']['error'].splitlines()[0]}"]
    return "\n".join(md) + "\n"


def _yes(ok: bool) -> str:
    return "met" if ok else "missed"


# ---- driver ---------------------------------------------------------------------------------------

def run_check(s: Sizes, out: Path, device: str, res: dict) -> None:
    logs, secs, threads = out / "logs", res["stage_s"], s.threads
    secs["data"] = run_stage("data", {"data": data_cmd(s, out)}, logs, 1200)
    sft_timeout = 60 * s.sft_minutes + 900  # the budget, plus setup and the final evaluation
    secs["sft"] = run_stage("sft", {f"sft_{k}": sft_cmd(s, out, k, device) for k in ("sosp", "apr")}, logs,
                            sft_timeout, threads)
    res["sft"] = {k: sft_result(out, k) for k in ("sosp", "apr")}
    secs["eval"] = run_stage("eval", {"eval": eval_cmd(s, out, device)}, logs, 1800, threads)
    res["eval"] = eval_result(out)
    secs["grpo"] = run_stage("grpo", {"grpo": grpo_cmd(s, out, device)}, logs, 1800, threads)
    res["grpo"] = grpo_result(out)
    t = time.perf_counter()
    try:
        res["engine"] = engine_stage(s, out, device)
    except Exception as e:
        raise StageError("engine", f"{type(e).__name__}: {e}") from e
    secs["engine"] = time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("MINUTES", 8)),
                    help="the budget (default $MINUTES or 8): SFT gets MINUTES-5 of it")
    ap.add_argument("--toy", action="store_true", help="CPU-sized: tiny model, 40 problems, seconds of SFT")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--out", default="runs/gpu_check")
    args = ap.parse_args()
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device: cuda, but no CUDA device is visible; accepted: auto or cpu (or --toy on a CPU)")
    sizes = toy_sizes() if args.toy else gpu_sizes(args.minutes)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    res: dict = {"toy": args.toy, "minutes": args.minutes, "device": device, "commit": commit.strip() or "unknown",
                 "device_name": torch.cuda.get_device_name() if device == "cuda" else "CPU", "sizes": asdict(sizes),
                 "stage_s": {}, "torch": torch.__version__}
    t0 = time.perf_counter()
    try:
        run_check(sizes, out, device, res)
        res["targets"] = targets(res, sizes.windows) if not args.toy else {}
    except StageError as e:
        res["failed"] = {"stage": e.stage, "error": str(e)}
    res["wall_s"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    (out / "gpu_check.md").write_text(md)
    print(md)
    if "failed" in res:
        print(res["failed"]["error"], file=sys.stderr)
        sys.exit(1)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
