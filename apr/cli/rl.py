"""End-to-end RL of a spawn/join model: GRPO (default) or PPO, rollouts through the APR runtime.

    python -m apr.cli.rl init=runs/sft/n3_tiny_apr/final data.dir=data/countdown_n3 train.steps=20
    python -m apr.cli.rl ... dist=none                     # one process, no Ray (debugging)
    python -m apr.cli.rl +rl=paper init=... dist=ray_cluster    # the paper's settings, on a running cluster
    python -m apr.cli.rl ... resume=true                   # continue from the newest checkpoint
    python -m apr.cli.rl ... train.strategy=deepspeed train.zero_stage=2   # DeepSpeed ZeRO learner
    python -m apr.cli.rl ... dist.placement.strategy=PACK  # reserve the actors' CPUs/GPUs in a placement group
    python -m apr.cli.rl ... engine.device=cuda dist.worker_gpus=1 # rollout engines on GPUs (the engine group)
    python -m apr.cli.rl ... engine=sglang 'engine.urls=[http://h1:30000,http://h2:30000]'  # a server per worker+

Writes runs/rl/<name>/{config.json,metrics.jsonl,checkpoints/,final/,summary.json}.
"""

from __future__ import annotations

import sys

import hydra

from apr.cli.common import config_dir, print_error, run_clean, to_container


def run(c: dict) -> dict:
    """Train from a resolved config dict (what Hydra composed); returns the run's summary."""
    from apr.config import from_dict
    from apr.dist import make_cluster
    from apr.rl.config import RLConfig
    from apr.rl.trainer import RLTrainer

    cfg = from_dict(RLConfig, c, "")
    return RLTrainer(cfg, make_cluster(cfg)).fit()


def _main(c: dict) -> None:
    import signal

    from apr.rl.trainer import RLError

    # SIGTERM (kill, Slurm's preemption) unwinds like Ctrl-C: the run's local Ray cluster is shut down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        summary = run(c)
    except RLError as e:
        print_error(str(e))
        sys.exit(1)
    print(f"[rl] done: step {summary['step']}, final checkpoint {summary['final']}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="rl")
def main(cfg) -> None:
    run_clean(lambda: _main(to_container(cfg)))


if __name__ == "__main__":
    main()
