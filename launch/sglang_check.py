#!/usr/bin/env python
"""A real-server check of the `sglang` engine: run it first on a new GPU machine or cluster.

    make sglang-check MODEL=runs/sft/n4_small_apr/final [DATA=data/countdown_n4]
    # runs: python launch/sglang_check.py --model MODEL --data DATA
Resources assumed: one node with CUDA (two GPUs for the distributed weight-sync step: the server on
the last GPU, this process on the first; with one GPU that step is reported as skipped) and
`pip install sglang` in this environment. It stops at once, saying which is missing. Cost: about
10-15 minutes: a server launch, 64 greedy Countdown problems through the local engine (on CUDA)
and SGLang compared thread by thread, token for token; 2 GRPO steps with weight_sync=disk and 2 with
weight_sync=distributed, each checking that the served weights changed; 2 more in which the server
is killed and restarted between steps 1 and 2 (by the run itself, before step 2's rollouts: the same
point on a fast or a slow machine). One table at the end; exit 1 naming the first step that failed.
`--toy` runs the same steps on CPU against tests/engine/sglang_standin.py (what the tests drive).
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "engine" / "sglang_standin.py"


@dataclass
class Row:
    step: str
    status: str  # ok | FAILED | skipped
    detail: str
    seconds: float


class CheckFailed(RuntimeError):
    """A step failed; the message names it."""


def preflight(is_toy: bool) -> str | None:
    """Why this machine cannot run the check (None: it can)."""
    if is_toy:
        return None
    import torch

    if not torch.cuda.is_available():
        return "sglang-check needs a CUDA GPU (torch.cuda.is_available() is False here); use --toy for the CPU dry run"
    if importlib.util.find_spec("sglang") is None:
        return "sglang-check needs SGLang in this environment: pip install sglang (it brings its own CUDA torch)"
    return None


def table(rows: list[Row]) -> str:
    """The markdown table the check prints."""
    lines = ["| step | result | detail | seconds |", "|---|---|---|---|"]
    lines += [f"| {r.step} | {r.status} | {r.detail.replace('|', '/')} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(lines)


def compare_trees(local: list, remote: list) -> str:
    """Token-for-token equality of two lists of solve results; an AssertionError names the first difference."""
    num_threads = num_tokens = 0
    for k, (a, b) in enumerate(zip(local, remote, strict=True)):
        ta, tb = a.tree.threads, b.tree.threads
        assert len(ta) == len(tb), f"problem {k}: {len(ta)} threads locally, {len(tb)} on SGLang"
        for j, (x, y) in enumerate(zip(ta, tb)):
            if x.ids != y.ids:
                i = next((i for i, (p, q) in enumerate(zip(x.ids, y.ids)) if p != q), min(len(x.ids), len(y.ids)))
                raise AssertionError(f"problem {k} thread {j}: first difference at token {i} "
                                     f"(local {x.ids[i:i + 3]}, sglang {y.ids[i:i + 3]})")
            num_threads, num_tokens = num_threads + 1, num_tokens + len(x.ids)
    return f"{len(local)} problems, {num_threads} threads, {num_tokens} tokens identical"


class Check:
    """The steps, in order, against one server at `self.url` (launched, killed and relaunched here)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[Row] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="apr-sglang-check-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.engine = None

    # ---- plumbing -----------------------------------------------------------------------------
    def step(self, name: str, fn) -> None:
        start = time.perf_counter()
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, naming its step
            self.rows.append(Row(name, "FAILED", f"{type(e).__name__}: {e}"[:400], time.perf_counter() - start))
            raise CheckFailed(f"sglang-check failed at step '{name}': {type(e).__name__}: {e}") from e
        status = "skipped" if str(detail).startswith("skipped") else "ok"
        self.rows.append(Row(name, status, str(detail), time.perf_counter() - start))

    def launch(self):
        from apr.engine.sglang import launch_server

        a = self.args
        command = [sys.executable, str(STANDIN)] if a.toy else None
        # float32 on both sides: the greedy trees are compared token for token (SGLang's own default, auto, serves
        # an fp32 checkpoint in float16; bf16 against bf16 rarely matches bit for bit over 1,024 tokens either)
        flags = (["--enable-deterministic-inference", "--dtype", "float32"]
                 + ([] if a.toy else ["--attention-backend", a.attention_backend]))
        env = {"CUDA_VISIBLE_DEVICES": str(self.num_gpus - 1)} if self.num_gpus > 1 else {}
        self.server = launch_server(a.model, self.port, flags, command=command, env=env, timeout_s=a.launch_timeout_s)

    @property
    def num_gpus(self) -> int:
        import torch

        return 0 if self.args.toy else torch.cuda.device_count()

    def engine_options(self, **over) -> dict:
        return {"urls": [self.url], "deterministic": True, "max_retries": 8, "backoff_s": 1.0, "dtype": "float32",
                "weights_dir": str(self.tmp / "weights"), **over}

    def problems(self) -> list:
        from apr.task import load_problems

        return load_problems(self.args.data, "test", self.args.num_problems)

    def served_logprobs(self, checkpoint: Path) -> tuple[float, float]:
        """(max |served - checkpoint| log-prob, max |served - initial model|) on a greedy probe: the served
        weights are `checkpoint`'s, and how far they moved."""
        from apr.engine import Request, SamplingParams
        from apr.engine.sglang.probe import _local_logprobs

        prompt = [2, 5, 9, 11, 13]
        self.engine.submit(Request("probe", prompt, SamplingParams(temperature=0.0, max_new_tokens=8)))
        (c,) = self.engine.run_until_done()
        diffs = []
        for path in (checkpoint, self.args.model):
            _, raw = _local_logprobs(str(path), prompt, c.output_ids, 1.0)  # greedy: raw log-probs
            diffs.append(max(abs(x - y) for x, y in zip(c.logprobs, raw)))
        return diffs[0], diffs[1]

    def weight_version(self) -> str:
        return str(self.engine._client.call("GET", self.url, "/get_model_info")["weight_version"])

    # ---- the steps ---------------------------------------------------------------------------------
    def start_server(self) -> str:
        from apr.engine.sglang import SGLangEngine

        self.launch()
        self.engine = SGLangEngine.from_pretrained(self.args.model, **self.engine_options())
        info = self.engine.server_info[self.url]
        return f"SGLang {info['version']} at {self.url}"

    def greedy_trees(self) -> str:
        from apr.api import Reasoner

        device = "cpu" if self.args.toy else "cuda"
        local = Reasoner.from_pretrained(self.args.model, engine="local", device=device, max_batch_size=64,
                                         dtype="float32")
        remote = Reasoner(self.engine, local.tokenizer)
        problems = [(p.numbers, p.target) for p in self.problems()]
        limits = {"max_thread_tokens": self.args.max_thread_tokens}
        return compare_trees(local.solve_batch(problems, **limits), remote.solve_batch(problems, **limits))

    def rl_steps(self, weight_sync: str) -> str:
        if weight_sync == "distributed" and not self.args.toy and self.num_gpus < 2:
            return "skipped: NCCL weight sync needs the server and this process on different GPUs (2+ GPUs)"
        run_dir = self.tmp / f"rl_{weight_sync}"
        rows = self.run_rl(weight_sync, run_dir)
        version = self.weight_version()
        assert sorted(rows) == [1, 2], f"the run logged steps {sorted(rows)}, not [1, 2]"
        assert version == "2", f"the server holds weight version {version}, not 2"
        off, moved = self.served_logprobs(run_dir / "final")
        assert off < self.args.tolerance, (f"the served log-probs differ from the trained checkpoint's by {off:.3g} "
                                           f"(> {self.args.tolerance}): the new weights did not arrive")
        self.engine.update_weights_from_disk(self.args.model, 0)  # back to the checkpoint for the next step
        return f"2 steps; the server holds v2 = the learner's weights (log-prob diff {off:.2g}; moved {moved:.2g})"

    def restart_mid_run(self) -> str:
        restarts: list[int] = []
        run_dir = self.tmp / "rl_restart"

        def restart_before(step: int | None) -> None:  # between step 1 (synced) and step 2's rollouts
            if step == 1 and not restarts:
                self.server.stop()
                self.launch()
                restarts.append(step)

        rows = self.run_rl("disk", run_dir, before_rollout=restart_before)
        assert restarts == [1], "the server was not restarted between steps 1 and 2"
        assert sorted(rows) == [1, 2], f"after the restart the run logged steps {sorted(rows)}, not [1, 2]"
        version = self.weight_version()
        assert version == "2", f"the restarted server holds weight version {version}, not 2"
        self.engine.update_weights_from_disk(self.args.model, 0)
        return "killed after step 1's sync, relaunched on the same port; step 2 ran and synced to it"

    def run_rl(self, weight_sync: str, run_dir: Path, before_rollout=None) -> dict:
        """Two RL steps against the server; `before_rollout(step)` runs before each step's rollouts (0-based
        step), inside the run: a defined point whatever the machine's speed."""
        from apr.cluster.in_process import InProcessCluster
        from apr.config import from_dict
        from apr.rl.config import RLConfig
        from apr.rl.trainer import RLTrainer
        from apr.train.metrics import read_metrics

        a = self.args
        backend = "gloo" if a.toy else "nccl"
        cfg = from_dict(RLConfig, {
            "init": a.model, "run_dir": str(run_dir), "name": "sglang_check", "progress": False,
            "data": {"dir": a.data}, "algo": {"group_size": 2}, "optim": {"lr": 1e-3},
            "train": {"steps": 2, "batch_problems": a.rl_problems, "device": "cpu" if a.toy else "auto"},
            "rollout": {"eval_problems": 0,
                        "runtime": {"temperature": 1.0, "max_thread_tokens": a.max_thread_tokens}},
            "engine": {"name": "sglang", **self.engine_options(weight_sync=weight_sync, weight_sync_backend=backend)},
            "checkpoint": {"every_steps": 1000}, "dist": {"mode": "none", "num_rollout_workers": 1},
            "wandb": {"mode": "disabled"}}, "")
        cluster = InProcessCluster(cfg)
        if before_rollout is not None:
            rollout = cluster.rollout

            def hooked(shards, num_samples, temperature=None, step=None):
                if temperature is None:  # training rollouts, not an evaluation
                    before_rollout(step)
                return rollout(shards, num_samples, temperature, step)

            cluster.rollout = hooked
        RLTrainer(cfg, cluster).fit()
        return {r["step"]: r for r in read_metrics(run_dir) if "rl/loss" in r}

    def run(self) -> int:
        try:
            for name, fn in (("launch", self.start_server), ("greedy trees", self.greedy_trees),
                             ("rl weight_sync=disk", lambda: self.rl_steps("disk")),
                             ("rl weight_sync=distributed", lambda: self.rl_steps("distributed")),
                             ("server restart mid-run", self.restart_mid_run)):
                if name in self.args.skip:
                    self.rows.append(Row(name, "skipped", "--skip", 0.0))
                    continue
                self.step(name, fn)
            return 0
        except CheckFailed as e:
            print(e, file=sys.stderr)
            return 1
        finally:
            print(table(self.rows))
            if self.engine is not None:
                self.engine.close()
            if self.server is not None:
                self.server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an HF checkpoint directory with its tokenizer")
    parser.add_argument("--data", default="data/countdown_n4", help="a data directory (test/ and train/ splits)")
    parser.add_argument("--num-problems", type=int, default=64)
    parser.add_argument("--rl-problems", type=int, default=8, help="problems per GRPO step (x 2 rollouts)")
    parser.add_argument("--max-thread-tokens", type=int, default=1024)
    parser.add_argument("--attention-backend", default="triton")
    parser.add_argument("--launch-timeout-s", type=float, default=600.0)
    parser.add_argument("--tolerance", type=float, default=0.05, help="max log-prob difference, server vs local")
    parser.add_argument("--skip", action="append", default=[], help="a step name to skip (repeatable)")
    parser.add_argument("--toy", action="store_true", help="CPU dry run against the stand-in server")
    args = parser.parse_args(argv)
    reason = preflight(args.toy)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
