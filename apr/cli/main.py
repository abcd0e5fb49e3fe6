"""The `apr` command: `apr data|sft|rl|eval [hydra overrides]`, `apr solve --model DIR --numbers ... --target N`."""

from __future__ import annotations

import sys

COMMANDS = {"data": "apr.cli.data", "solve": "apr.cli.solve", "eval": "apr.cli.eval", "sft": "apr.cli.sft", "rl": "apr.cli.rl",
            "report": "apr.cli.report"}


USAGE = ("usage: apr {" + ",".join(COMMANDS) + "} [options]\n"
         "  data   generate Countdown problems, SoS+/APR traces and statistics (Hydra overrides)\n"
         "  sft    train a model on solver traces (Hydra overrides, e.g. +sft=n3_tiny_apr)\n"
         "  rl     GRPO/PPO of a trained model on Ray (Hydra overrides, e.g. init=runs/sft/x/final)\n"
         "  eval   evaluate checkpoints on held-out problems (Hydra overrides: models.<name>=<dir>)\n"
         "  report write REPORT.md for a quickstart-style run directory: apr report --root runs/quickstart\n"
         "  solve  solve a Countdown problem with a trained model: apr solve --model DIR --numbers 22 26 31 53 --target 27\n"
         "every command: apr <command> --help; the engine of sft/rl/eval/solve: engine=local|sglang engine.<field>=...")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0)
    if not argv or argv[0] not in COMMANDS:
        if argv:
            print(f"error: apr: unknown command {argv[0]!r}; accepted: {', '.join(COMMANDS)}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    sys.argv = [f"apr {argv[0]}"] + argv[1:]
    module.main()


if __name__ == "__main__":
    main()
