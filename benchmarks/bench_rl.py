"""One GRPO step: apr's `RLTrainer` against TRL's `GRPOTrainer` (HF `generate` rollouts), side by side on this CPU.

    .venv/bin/python benchmarks/bench_rl.py   # 16 problems x G=4, 512-token threads, 3 repeats: ~3-5 min, idle 2 cores
    .venv/bin/python benchmarks/bench_rl.py --problems 2 --group 2 --repeats 1 --max-new 64 --max-wait-s 0 \
        --out /tmp/bench_rl                   # smoke test, ~10 s
    .venv/bin/python benchmarks/bench_rl.py --device cuda --dist none   # both sides on the GPU (no Ray there)
    .venv/bin/python benchmarks/bench_rl.py --off-policy-steps 1   # ours one-step off-policy (rollouts overlap the update)
    .venv/bin/python benchmarks/bench_rl.py --ref-placement learner   # ours: the reference beside the learner
    (make bench-rl: installs trl from the `bench` extra first)

Same SoS+ checkpoint (serial traces: TRL cannot spawn), same problems (the first --problems of
<data>/train/problems.jsonl), same group size, temperature 1.0 (no top-k/top-p), same thread window
(ours: runtime.max_thread_tokens; TRL: max_completion_length = window - prompt tokens), lr, KL
coefficient (TRL's beta), clip 0.2, token-mean loss, one optimizer step per batch (ours inner_steps=1,
TRL num_iterations=1 and steps_per_generation=1), grad clip 1.0, the same precision (--precision: auto is
bf16 where this device has it natively, else fp32, for both sides), all rollouts of a step in one batch.
Ours: by default on a local Ray cluster with 2 rollout workers, each holding the reference and scoring its
own rollouts (--ref-placement rollout: the same numbers as a reference beside the learner, off the critical
path); --off-policy-steps 1 changes the algorithm (each step trains on rollouts sampled one update earlier,
generated while the previous update ran; TRL stays on-policy), so the table says which. Each side takes one warm-up step, then
the sides alternate A B A B for --repeats steps; each figure is the median over repeats. A step's
time: ours, `train_step()` (rollout, advantages, ref, update, weight sync); TRL, from its
`on_step_begin` to `on_step_end` (generation, scoring, ref, loss, backward, optimizer step).
Writes runs/bench/rl.json (every measurement) and runs/bench/rl.md (table).
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
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

TARGET = 3.0  # ours / TRL, problems per second
SIDES = ("ours", "trl")
PHASES = ("rollout", "advantages", "ref", "old_logprobs", "update", "rollout_wait", "sync", "other")  # columns
OURS_PHASES = ("rollout", "advantages", "ref", "update", "rollout_wait", "sync")  # RLTrainer's step timers


@dataclass
class Setup:
    """What both sides share."""

    model: str
    data: str
    problems: list  # apr.task.Problem, the first `num` of the train split
    group: int
    window: int  # tokens per thread: prompt + generated
    prompt_tokens: int  # <bos> + prompt (the same for every N=3 problem; checked)
    lr: float
    kl: float
    micro_batch_tokens: int
    seed: int
    dist: str = "none"  # ours only: placement
    workers: int = 1  # ours only: rollout workers
    compile: bool = False  # ours only: torch.compile in the local engine
    device: str = "cpu"  # both sides: ours (learner, reference, engine) and TRL (model and generate)
    precision: str = "fp32"  # both sides, resolved for `device` (fp32 or bf16)
    ref_placement: str = "rollout"  # ours only: dist.ref_placement
    off_policy_steps: int = 0  # ours only: train.off_policy_steps

    @property
    def max_new(self) -> int:
        return self.window - self.prompt_tokens

    @property
    def rollouts(self) -> int:
        return len(self.problems) * self.group


# ---- ours -------------------------------------------------------------------------------------

class OursSide:
    """`RLTrainer(cfg, make_cluster(cfg)).train_step()`, one step per call, phases from its own timers."""

    def __init__(self, s: Setup, run_dir: Path) -> None:
        from apr.cluster import make_cluster
        from apr.config import from_dict
        from apr.rl.config import RLConfig
        from apr.rl.trainer import RLTrainer

        cfg = from_dict(RLConfig, {
            "init": s.model, "run_dir": str(run_dir), "name": "bench_rl", "seed": s.seed, "progress": False,
            "data": {"dir": s.data, "split": "train", "max_problems": len(s.problems)},
            "algo": {"advantage": "grpo", "group_size": s.group},
            "loss": {"kl_coef": s.kl, "clip": 0.2, "aggregation": "token_mean"},
            "optim": {"lr": s.lr, "grad_clip": 1.0},
            "train": {"batch_problems": len(s.problems), "inner_steps": 1, "old_logprobs": "rollout",
                      "precision": s.precision, "device": s.device, "micro_batch_tokens": s.micro_batch_tokens,
                      "off_policy_steps": s.off_policy_steps},
            "rollout": {"runtime": {"max_thread_tokens": s.window, "temperature": 1.0}, "eval_problems": 0},
            "engine": {"max_seq_len": s.window, "max_batch_size": s.rollouts, "compile": s.compile, "device": s.device},
            "dist": {"mode": s.dist, "num_rollout_workers": s.workers, "worker_threads": 0 if s.workers == 1 else 1,
                     "ref_placement": s.ref_placement},
            "wandb": {"mode": "disabled"}}, "")
        self.trainer = RLTrainer(cfg, make_cluster(cfg))
        self.num_rollouts = s.rollouts

    def step(self) -> dict:
        row = self.trainer.train_step()
        self.trainer.step += 1  # as fit() does: the next step reshuffles the same problems, new seeds
        phases = {k: row[f"time/{k}_s"] for k in OURS_PHASES if f"time/{k}_s" in row}
        n = self.num_rollouts
        return {"step_s": row["time/step_s"], "phases": phases,
                "generated_tokens": round(row["rollout/mean_generated_tokens"] * n), "rollouts": n,
                "reward": row["rollout/reward"], "truncated_share": row["rollout/root_window_share"],
                "policy_lag": row["rl/policy_lag"],
                # generated tokens / wall s of their generation (off-policy: launch to collect, beside the update)
                "rollout_tokens_per_s": row["rollout/tokens_per_s"]}


# ---- TRL --------------------------------------------------------------------------------------

class TRLSide:
    """TRL's `GRPOTrainer`, one `train()` of one step per call; phases timed by wrapping its methods."""

    def __init__(self, s: Setup, out_dir: Path) -> None:
        from datasets import Dataset
        from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from apr.search import problem_prompt
        from apr.task import Problem, reward

        tok = AutoTokenizer.from_pretrained(s.model)
        rows = [{"prompt": tok.bos_token + problem_prompt(p), "numbers": p.numbers, "target": p.target}
                for p in s.problems]
        self.times: dict[str, float] = {}
        self.stats: dict = {}

        def countdown(prompts, completion_ids, numbers, target, **_):
            # the text our reward sees: the whole thread, decoded with special tokens
            texts = [tok.decode(tok(p)["input_ids"] + c, skip_special_tokens=False)
                     for p, c in zip(prompts, completion_ids)]
            out = [reward(Problem(list(n), t), x) for x, n, t in zip(texts, numbers, target)]
            self.stats["rewards"] = out
            return out

        args = GRPOConfig(
            output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=s.rollouts,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=s.group,
            max_completion_length=s.max_new, temperature=1.0, top_p=1.0, top_k=0,
            learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            beta=s.kl, epsilon=0.2, loss_type="dapo", scale_rewards="group",
            bf16=s.precision == "bf16", use_cpu=s.device == "cpu", report_to="none", save_strategy="no", logging_steps=1,
            disable_tqdm=True, seed=s.seed, dataloader_num_workers=0, log_completions=False)
        clock = self

        class StepClock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                clock.stats["start"] = time.perf_counter()

            def on_step_end(self, *a, **k):
                clock.stats["step_s"] = time.perf_counter() - clock.stats["start"]

        self.trainer = GRPOTrainer(model=s.model, reward_funcs=countdown, args=args,
                                   train_dataset=Dataset.from_list(rows), processing_class=tok,
                                   callbacks=[StepClock()])
        self.trainer.remove_callback(PrinterCallback)
        self.eos = set(self.trainer.eos_token_ids)
        self._instrument()

    def _timed(self, name: str, key, after=None) -> None:
        fn = getattr(self.trainer, name)

        def wrapped(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            label = key(*a) if callable(key) else key
            if label:
                self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - t
            if after:
                after(out)
            return out

        setattr(self.trainer, name, wrapped)  # an instance attribute: `self._generate(...)` finds it

    def _instrument(self) -> None:
        import torch

        def count(out):  # _generate -> (prompt_ids, completion_ids, ...)
            completions = out[1]
            self.stats["tokens"] = sum(len(c) for c in completions)
            self.stats["rollouts"] = len(completions)
            self.stats["truncated"] = sum(not c or c[-1] not in self.eos for c in completions)

        def logps_phase(model, *_):
            if model is self.trainer.ref_model:
                return "ref"
            return None if torch.is_grad_enabled() else "old_logprobs"  # the loss's own forward is in update

        self._timed("_generate", "rollout", count)  # tokenize, HF generate, decode
        self._timed("_get_per_token_logps_and_entropies", logps_phase)
        self._timed("_calculate_rewards", "reward")
        self._timed("_generate_and_score_completions", "generate_and_score")

    def step(self) -> dict:
        self.times, self.stats = {}, {}
        self.trainer.train()
        t = self.times
        score = t.pop("generate_and_score")
        phases = {"rollout": t.get("rollout", 0.0),
                  "advantages": score - sum(t.get(k, 0.0) for k in ("rollout", "ref", "old_logprobs")),
                  **{k: t[k] for k in ("ref", "old_logprobs") if k in t},
                  "update": self.stats["step_s"] - score}  # loss forward/backward, clip, optimizer step
        n = self.stats["rollouts"]
        rewards = self.stats["rewards"]
        return {"step_s": self.stats["step_s"], "phases": phases, "generated_tokens": self.stats["tokens"],
                "rollouts": n, "reward": sum(rewards) / max(len(rewards), 1),
                "truncated_share": self.stats["truncated"] / max(n, 1),
                "rollout_tokens_per_s": self.stats["tokens"] / max(phases["rollout"], 1e-9)}


# ---- driver -----------------------------------------------------------------------------------

def make_setup(args) -> Setup:
    from transformers import AutoTokenizer

    from apr.search import problem_prompt
    from apr.task import load_problems

    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no checkpoint at {args.model}: train the tiny N=3 SoS+ model with\n"
                 f"    python -m apr.cli.sft +sft=n3_tiny_sosp name=n3_tiny    # ~10 min, writes runs/sft/n3_tiny/final\n"
                 f"or pass --model runs/sft/<name>/final")
    problems = load_problems(args.data, "train", args.problems)
    tok = AutoTokenizer.from_pretrained(args.model)
    lengths = set()
    for p in problems:  # TRL tokenizes "<bos>" + prompt; it must give the ids our runtime feeds the engine
        ids = tok(tok.bos_token + problem_prompt(p))["input_ids"]
        assert ids == [tok.bos_token_id] + tok.encode(problem_prompt(p), add_special_tokens=False), ids
        lengths.add(len(ids))
    prompt_tokens = max(lengths)
    window = prompt_tokens + args.max_new if args.max_new else args.window
    if len(lengths) > 1:
        print(f"note: prompts of {sorted(lengths)} tokens; TRL gets window - {prompt_tokens} new tokens")
    import torch

    from apr.train.device import resolve_precision

    precision = resolve_precision(args.precision, torch.device(args.device))
    return Setup(args.model, args.data, problems, args.group, window, prompt_tokens, args.lr, args.kl,
                 args.micro_batch_tokens, args.seed, args.dist, args.workers, args.compile, args.device,
                 precision, args.ref_placement, args.off_policy_steps)


def measure(sides: dict, repeats: int, max_wait_s: float) -> dict[str, list[dict]]:
    """A warm-up step per side, then `repeats` steps per side, alternating; every run kept."""
    from bench_engine import others_cores, wait_quiet  # benchmarks/ is on sys.path (the script's folder)

    for name, side in sides.items():
        t = time.perf_counter()
        side.step()
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(repeats):
        for name, side in sides.items():
            waited = wait_quiet(max_wait_s) if max_wait_s > 0 else 0.0
            run, others = others_cores(side.step)
            run.update(others_cores=round(others, 3), waited_s=round(waited, 1))
            runs[name].append(run)
            print(f"repeat {r + 1}/{repeats} {name}: {run['step_s']:.2f} s, {run['generated_tokens']} tokens, "
                  f"other processes {others:.2f} cores", flush=True)
    return runs


def summarize(runs: list[dict], num_problems: int) -> dict:
    med = statistics.median
    out = {"step_s": med(r["step_s"] for r in runs),
           "problems_per_s": med(num_problems / r["step_s"] for r in runs),
           "generated_tokens": med(r["generated_tokens"] for r in runs),
           "generated_tokens_per_s": med(r["generated_tokens"] / r["step_s"] for r in runs),
           "rollout_tokens_per_s": med(r["rollout_tokens_per_s"] for r in runs),
           "reward": med(r["reward"] for r in runs), "truncated_share": med(r["truncated_share"] for r in runs),
           "max_others_cores": max(r["others_cores"] for r in runs)}
    names = list(runs[0]["phases"])
    out["phases_s"] = {k: med(r["phases"].get(k, 0.0) for r in runs) for k in names}
    out["phases_s"]["other"] = med(r["step_s"] - sum(r["phases"].values()) for r in runs)
    out["phase_share"] = {k: v / out["step_s"] for k, v in out["phases_s"].items()}
    return out


def to_markdown(res: dict) -> str:
    m, o, t = res["matched"], res["summary"]["ours"], res["summary"]["trl"]
    head = (f"{m['problems']} problems x G={m['group']} ({m['rollouts']} rollouts), {m['window']}-token threads "
            f"(TRL max_completion_length {m['trl_max_completion_length']}), one optimizer step, "
            f"median of {res['repeats']} steps after a warm-up, sides alternating; {m['precision']}; "
            f"{m['policy']}; ours: {m['ours_placement']}")
    md = [head, "", "| side | step s | problems/s | generated tokens | generated tok/s | rollout-phase tok/s "
          "| reward | hit length limit |", "|---|---|---|---|---|---|---|---|"]
    for name, label in (("ours", "apr RLTrainer"), ("trl", f"TRL {res['meta']['trl']} GRPOTrainer")):
        s = res["summary"][name]
        noisy = " (noisy)" if s["max_others_cores"] > 0.25 else ""
        md.append(f"| {label}{noisy} | {s['step_s']:.2f} | {s['problems_per_s']:.2f} | {s['generated_tokens']:,.0f} "
                  f"| {s['generated_tokens_per_s']:,.0f} | {s['rollout_tokens_per_s']:,.0f} | {s['reward']:.3f} "
                  f"| {s['truncated_share']:.0%} |")
    r = res["ratios"]
    verdict = "met" if r["problems_per_s"] >= TARGET else "MISSED"
    md.append(f"| **ours / TRL** | {t['step_s'] / o['step_s']:.2f}x faster | **{r['problems_per_s']:.2f}x** | "
              f"| **{r['generated_tokens_per_s']:.2f}x** | {r['rollout_tokens_per_s']:.2f}x | | |")
    phases = [k for k in PHASES if k in o["phases_s"] or k in t["phases_s"]]
    md += ["", f"Target: >= {TARGET:.0f}x TRL's problems/s: **{verdict}** ({r['problems_per_s']:.2f}x).", "",
           "| side | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for name in SIDES:
        s = res["summary"][name]
        cells = [f"{s['phases_s'][k]:.2f} s ({s['phase_share'][k]:.0%})" if k in s["phases_s"] else "-"
                 for k in phases]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"



def matched(s: Setup) -> dict:
    return {
        "model": s.model, "data": s.data, "problems": len(s.problems), "group": s.group, "rollouts": s.rollouts,
        "window": s.window, "prompt_tokens": s.prompt_tokens, "trl_max_completion_length": s.max_new,
        "sampling": "temperature 1.0, top_p 1.0, top_k off", "lr": s.lr, "kl_coef_and_trl_beta": s.kl,
        "clip": 0.2, "loss": "token mean over the batch (ours token_mean, TRL loss_type=dapo)",
        "advantage": "GRPO, group mean and std (ours eps 1e-6, TRL 1e-4)",
        "optimizer_steps_per_step": "1 (ours train.inner_steps=1; TRL num_iterations=1, steps_per_generation=1)",
        "optimizer": "AdamW betas (0.9, 0.999), eps 1e-8, no weight decay, constant lr, grad clip 1.0",
        "precision": f"{s.precision} both",
        "rollout_batch": f"all {s.rollouts} in one batch (ours engine max_batch_size; TRL one generate call)",
        "old_logprobs": "ours: the engine's sampled log-probs; TRL: none needed (on-policy, one iteration)",
        "policy": ("ours one-step off-policy (train.off_policy_steps=1: rollouts sampled one update earlier, "
                   "generated during the previous update; the PPO ratio against their sampled log-probs); "
                   "TRL on-policy" if s.off_policy_steps else "on-policy both"),
        "learner_micro_batch": f"ours {s.micro_batch_tokens} padded tokens; TRL the whole batch",
        "ours_placement": (f"dist={s.dist}, {s.workers} rollout worker(s), reference in the "
                           f"{'rollout workers' if s.ref_placement == 'rollout' else 'learner process'}"
                           + (", engine torch.compile" if s.compile else "")),
        "trl_generation": "HF generate, DynamicCache, no vLLM, CPU"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/sft/n3_tiny/final", help="an SoS+ checkpoint (HF dir + tokenizer)")
    ap.add_argument("--data", default="data/countdown_n3", help="its data: <data>/train/problems.jsonl")
    ap.add_argument("--problems", type=int, default=16, help="problems per step (the first N of the train split)")
    ap.add_argument("--group", type=int, default=4, help="G: rollouts per problem")
    ap.add_argument("--window", type=int, default=512, help="tokens per thread, prompt included")
    ap.add_argument("--max-new", type=int, default=None, help="overrides --window: window = prompt + this")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--kl", type=float, default=0.001, help="our loss.kl_coef and TRL's beta")
    ap.add_argument("--micro-batch-tokens", type=int, default=16384, help="ours: train.micro_batch_tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dist", default="ray_local", choices=["none", "ray_local"],
                    help="ours: one process, or rollout workers + learner as actors on a local Ray cluster")
    ap.add_argument("--workers", type=int, default=2, help="ours: rollout workers (the step's problems are split)")
    ap.add_argument("--compile", action="store_true", help="ours: torch.compile the local engine's layers")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    ap.add_argument("--max-wait-s", type=float, default=60.0,
                    help="per run, how long to wait for other processes to leave the CPU (0: do not wait)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: both sides (with cuda use --dist none)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="both sides: auto is bf16 where --device has it natively, else fp32")
    ap.add_argument("--ref-placement", default="rollout", choices=["learner", "rollout"],
                    help="ours: dist.ref_placement (the reference in the rollout workers, or beside the learner)")
    ap.add_argument("--off-policy-steps", type=int, default=0, choices=[0, 1],
                    help="ours: train.off_policy_steps (1: the next step's rollouts overlap this step's update)")
    args = ap.parse_args()
    import torch
    import transformers

    try:
        import trl
    except ImportError:
        sys.exit("TRL is not installed: .venv/bin/pip install -e '.[bench]'  (or make bench-rl)")

    torch.set_num_threads(args.threads)
    t0, load_before = time.perf_counter(), os.getloadavg()
    setup = make_setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"ours": OursSide(setup, Path(tmp) / "ours"), "trl": TRLSide(setup, Path(tmp) / "trl")}
        runs = measure(sides, args.repeats, args.max_wait_s)
    summary = {k: summarize(v, len(setup.problems)) for k, v in runs.items()}
    ratios = {k: summary["ours"][k] / summary["trl"][k]
              for k in ("problems_per_s", "generated_tokens_per_s", "rollout_tokens_per_s")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"meta": {"command": " ".join(["python", *sys.argv]), "commit": commit, "torch": torch.__version__,
                       "transformers": transformers.__version__, "trl": trl.__version__, "device": args.device,
                       "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                       "machine": f"{platform.machine()} python {platform.python_version()}, {os.cpu_count()} CPUs",
                       "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                       "wall_s": round(time.perf_counter() - t0, 1)},
              "matched": matched(setup), "repeats": args.repeats, "target_ratio": TARGET,
              "ratios": ratios, "target_met": ratios["problems_per_s"] >= TARGET, "summary": summary, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(result)
    (out / "rl.md").write_text(md)
    print(md)
    print(f"wall {result['meta']['wall_s']} s; wrote {out / 'rl.json'} and {out / 'rl.md'}")


if __name__ == "__main__":
    main()
