"""Solve one Countdown problem with a trained spawn/join model and show the thread tree.

    apr solve --model runs/sft/apr_small/final --numbers 22 26 31 53 --target 27
    apr solve --model DIR --numbers 22 26 31 53 --target 27 --json      # for machines
    apr solve --model DIR --numbers 22 26 31 53 --target 27 --device cuda        # = engine.device=cuda
    apr solve --model DIR --numbers 22 26 31 53 --target 27 engine=sglang 'engine.urls=[http://h:30000]'
    # a ~6M model on CPU: about a second per problem
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from apr.config import ConfigError

# Hydra overrides of the `engine` group (conf/solve.yaml), e.g. engine=sglang engine.urls=[...]
_ENGINE_OVERRIDE = re.compile(r"^[+~]{0,2}engine([.=@]|$)")
# apr.runtime.RuntimeConfig fields taken as flags (--max-thread-tokens ...): (type, help); defaults are its own
RUNTIME_FLAGS = {"max_thread_tokens": (int, "context window of one thread"),
                 "max_total_tokens": (int, "token budget over all threads"),
                 "max_children": (int, None), "max_depth": (int, None),
                 "temperature": (float, "0 = greedy"), "seed": (int, None)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="apr solve", description=__doc__.split("\n\n")[0],
                                 epilog="engine overrides (the engine group, conf/engine/): engine=local|sglang, "
                                        "engine.<field>=<value>, e.g. engine=sglang 'engine.urls=[http://h:30000]'")
    ap.add_argument("--model", required=True, help="checkpoint directory (HF model + tokenizer)")
    ap.add_argument("--numbers", type=int, nargs="+", required=True, help="the input numbers")
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--condition", default=None, help="first prompt line for conditioned models, e.g. 'threads 6'")
    _add_runtime_flags(ap)
    ap.add_argument("--device", default=None, help="the local engine's torch device (engine.device): cpu, cuda, cuda:1")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tree")
    args = ap.parse_args([a for a in argv if not _ENGINE_OVERRIDE.match(a)])
    args.engine_overrides = [a for a in argv if _ENGINE_OVERRIDE.match(a)]
    return args


def _add_runtime_flags(ap: argparse.ArgumentParser) -> None:
    """--max-thread-tokens, ...: the `RUNTIME_FLAGS` fields of RuntimeConfig, with its defaults."""
    from apr.runtime.config import RuntimeConfig

    for name, (kind, text) in RUNTIME_FLAGS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(RuntimeConfig, name), help=text)


def engine_from_args(args: argparse.Namespace):
    """The engine group (conf/solve.yaml) with the command line's engine overrides, typed."""
    from dataclasses import replace

    from apr.cli.common import compose
    from apr.engine.config import engine_config, engine_name, with_window

    engine = engine_config(compose("solve", args.engine_overrides)["engine"])
    if args.device is not None:
        if engine_name(engine) != "local":
            raise ConfigError(f"--device: got {args.device!r}; accepted: only with the local engine (SGLang "
                              "servers place the model themselves); drop it, or use engine=local")
        engine = replace(engine, device=args.device)  # re-validated by LocalEngineConfig.__post_init__
    return with_window(engine, args.max_thread_tokens)


def run(args: argparse.Namespace) -> dict:
    from apr.api import Reasoner
    from apr.config import from_dict
    from apr.engine.config import engine_name, engine_options
    from apr.engine.local import check_device_available
    from apr.runtime import RuntimeConfig

    if args.device is not None:
        check_device_available(args.device, "--device")
    engine = engine_from_args(args)
    limits = from_dict(RuntimeConfig, {name: getattr(args, name) for name in RUNTIME_FLAGS}, "runtime")
    reasoner = Reasoner.from_pretrained(args.model, engine=engine_name(engine), runtime=limits,
                                        **engine_options(engine))
    result = reasoner.solve(args.numbers, args.target, condition=args.condition)
    if args.json:
        print(result.to_json())
    else:
        print(result.tree.render())
        print()
        print(f"answer: {result.answer}  ->  {'correct' if result.correct else 'wrong'} ({result.reason})")
        print("metrics: " + json.dumps(result.metrics))
    return result.to_dict()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
