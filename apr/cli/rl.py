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

from apr.cli.common import check_writable_dir, config_dir, print_error, run_clean, to_container


def preflight(c: dict) -> None:
    """What can refuse the run, checked before Hydra writes into run_dir (`apr.cli.common.Preflight`)."""
    from pathlib import Path

    from apr.config import from_dict
    from apr.rl.config import RLConfig
    from apr.rl.trainer import check_inputs, run_recipe
    from apr.train import checkpoint as ckpt

    cfg = from_dict(RLConfig, c, "")
    check_writable_dir(cfg.run_dir, "run_dir")
    ckpt.refuse_to_clobber(Path(cfg.run_dir), cfg.resume, cfg.overwrite)
    check_inputs(cfg)
    if cfg.resume:
        ckpt.check_resume_early(Path(cfg.run_dir), run_recipe(cfg), cfg.resume_changed)


def run(c: dict) -> dict:
    """Train from a resolved config dict (what Hydra composed); returns the run's summary."""
    from apr.cluster import make_cluster
    from apr.config import from_dict
    from apr.rl.config import RLConfig
    from apr.rl.trainer import RLTrainer, check_inputs

    cfg = from_dict(RLConfig, c, "")
    check_inputs(cfg)  # before any actor starts
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
