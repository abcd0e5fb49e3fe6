"""Supervised training from scratch on SoS+ or APR solver threads.

    python -m apr.cli.sft model=tiny data.dir=data/countdown_n3 data.max_seq_len=512 train.max_steps=1000
    # tiny (1M params) on 2 CPU cores, bf16: ~12-15k tokens/s, ~0.6 s per step of 16 x 512 tokens:
    # 1,000 steps ~10 min. Writes runs/sft/<name>/{config.json,metrics.jsonl,checkpoints/,final/}.
    torchrun --nproc_per_node 2 -m apr.cli.sft ...               # DDP (gloo on CPU, nccl on CUDA)
    python -m apr.cli.sft ... train.strategy=deepspeed train.zero_stage=2     # ZeRO; ~1 s to set up
    python -m apr.cli.sft ... resume=true                        # continue the newest checkpoint
    python -m apr.cli.sft ... train.device=cuda engine.device=cuda   # train, and solve-rate, on a GPU

The solve-rate hook: when `apr.api.Reasoner` is importable, every `eval.every_steps` the model
solves `eval.num_problems` validation problems greedily through the APR runtime, on the `engine`
group's local engine (conf/engine/local.yaml; it decodes the weights being trained, in this process),
and logs the standard metrics (`apr.scoring.solve_and_score`) as `eval/accuracy`, `eval/mean_total_tokens`, ...
"""

from __future__ import annotations

import hydra

from apr.cli.common import check_writable_dir, config_dir, run_clean, to_container


def load_tokenizer(data_dir: str):
    from pathlib import Path

    from transformers import AutoTokenizer

    from apr.config import ConfigError

    path = Path(data_dir) / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"data.dir: {data_dir!r} has no tokenizer/tokenizer.json; accepted: a directory "
                          f"written by `python -m apr.cli.data data.out_dir={data_dir}`")
    return AutoTokenizer.from_pretrained(path)


def val_problems(cfg, max_problems: int | None = None) -> list:
    """The first problems of `<data.dir>/val/problems.jsonl`, which the solve-rate hook solves; a ConfigError
    if it is missing."""
    from apr.task import load_problems

    return load_problems(cfg.data.dir, "val", max_problems, purpose=" for the solve-rate evaluation "
                         f"(eval.num_problems={cfg.eval.num_problems})", accepted="a data directory with a "
                         "validation split (data.num_val > 0), or eval.num_problems=0")


def solve_rate_hook(cfg, engine=None):
    """`evaluate(model, tokenizer, step) -> dict` over validation problems, or None if unavailable.

    The dict holds the standard metrics (`apr.scoring.METRICS`), which the trainer logs as `eval/<name>`.
    `engine`: the hook's LocalEngineConfig (None: the local defaults at the data's window)."""
    import copy

    if cfg.eval.num_problems == 0:
        return None
    try:
        from apr.api import Reasoner
    except ImportError as e:
        print(f"[sft] solve-rate evaluation unavailable ({e}); logging the validation loss only", flush=True)
        return None
    if not (hasattr(Reasoner, "from_model") and hasattr(Reasoner, "solve_batch")):
        print("[sft] solve-rate evaluation unavailable (apr.api.Reasoner lacks from_model/solve_batch)", flush=True)
        return None
    from apr.engine.config import engine_config, engine_options, with_window
    from apr.scoring import solve_and_score

    problems = val_problems(cfg, cfg.eval.num_problems)
    options = engine_options(with_window(engine_config(engine or {"max_seq_len": None}), cfg.data.max_seq_len))

    def evaluate(model, tokenizer, step: int) -> dict:
        # a copy: the engine may cast or move the model it is given
        reasoner = Reasoner.from_model(copy.deepcopy(model), tokenizer, **options)
        return solve_and_score(reasoner, problems, cfg.eval.limits, condition=cfg.eval.condition).metrics

    return evaluate


def preflight(c: dict) -> None:
    """What can refuse the run, checked before Hydra writes into run_dir (`apr.cli.common.Preflight`)."""
    from pathlib import Path

    from apr.config import ConfigError
    from apr.sft.trainer import run_recipe
    from apr.train import checkpoint as ckpt

    cfg, _ = load_config(c)
    check_writable_dir(cfg.run_dir, "run_dir")
    ckpt.refuse_to_clobber(Path(cfg.run_dir), cfg.resume, cfg.overwrite)
    if not (Path(cfg.data.dir) / "train" / f"{cfg.data.solver}.jsonl").is_file():
        raise ConfigError(f"data.dir: {cfg.data.dir!r} has no train/{cfg.data.solver}.jsonl; accepted: a "
                          f"directory written by `python -m apr.cli.data data.out_dir={cfg.data.dir}`")
    if cfg.eval.num_problems > 0:
        val_problems(cfg, 1)
    load_tokenizer(cfg.data.dir)
    if cfg.resume:
        recipe = run_recipe(cfg, cfg.train.max_steps or 0)
        if cfg.train.max_steps is None:  # the step count needs the data loaded: the trainer checks it
            recipe = {k: v for k, v in recipe.items() if not k.startswith("steps")}
        ckpt.check_resume_early(Path(cfg.run_dir), recipe, cfg.resume_changed)


def run(c: dict, evaluate=None) -> dict:
    """Train from a resolved config dict (what Hydra composed); returns the trainer's summary."""
    from apr.sft import Trainer

    cfg, engine = load_config(c)
    tokenizer = load_tokenizer(cfg.data.dir)
    return Trainer(cfg, tokenizer, evaluate or solve_rate_hook(cfg, engine)).fit()


def load_config(c: dict):
    """(SFTConfig, the solve-rate hook's engine config) from a composed config, both checked before
    training starts. The engine (the `engine` group) must be local: the hook decodes the weights being
    trained, in this process."""
    from apr.config import fail, from_dict
    from apr.engine.config import engine_config, engine_name, with_window
    from apr.sft import SFTConfig

    engine = engine_config(c.get("engine") or {})
    cfg = from_dict(SFTConfig, {k: v for k, v in c.items() if k not in ("engine", "hydra")}, "")
    if engine_name(engine) != "local" and cfg.eval.num_problems:
        fail("engine", engine_name(engine), "local for SFT (its solve-rate hook decodes the weights being trained "
             "in this process); or eval.num_problems=0 to train without the solve rate")
    return cfg, with_window(engine, cfg.data.max_seq_len)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="sft")
def main(cfg) -> None:
    run_clean(lambda: run(to_container(cfg)))


if __name__ == "__main__":
    main()
