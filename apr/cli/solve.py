"""Solve one Countdown problem with a trained spawn/join model and show the thread tree.

    apr solve --model runs/sft/apr_small/final --numbers 22 26 31 53 --target 27
    apr solve --model DIR --numbers 22 26 31 53 --target 27 --json      # for machines
    # a ~6M model on CPU: about a second per problem
"""

from __future__ import annotations

import argparse
import json
import sys

from apr.config import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="apr solve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory (HF model + tokenizer)")
    ap.add_argument("--numbers", type=int, nargs="+", required=True, help="the input numbers")
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--condition", default=None, help="first prompt line for conditioned models, e.g. 'threads 6'")
    ap.add_argument("--max-thread-tokens", type=int, default=1024, help="context window of one thread")
    ap.add_argument("--max-total-tokens", type=int, default=None, help="token budget over all threads")
    ap.add_argument("--max-children", type=int, default=16)
    ap.add_argument("--max-depth", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tree")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from apr.api import Reasoner
    from apr.engine.local import check_device_available
    from apr.runtime import RuntimeConfig

    check_device_available(args.device, "--device")

    limits = RuntimeConfig(max_children=args.max_children, max_depth=args.max_depth,
                           max_thread_tokens=args.max_thread_tokens, max_total_tokens=args.max_total_tokens,
                           temperature=args.temperature, seed=args.seed)
    reasoner = Reasoner.from_pretrained(args.model, runtime=limits, device=args.device)
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
