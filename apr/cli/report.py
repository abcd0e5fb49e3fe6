"""Write `<root>/REPORT.md` for a quickstart-style run directory (data/, sft/, rl/, eval/).

    python -m apr.cli.report --root runs/quickstart
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="apr report", description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/quickstart", help="the run directory holding data/, sft/, rl/, eval/")
    p.add_argument("--model", default=None, help="checkpoint for the example tree (default: rl/final, else sft/final)")
    args = p.parse_args(argv)
    from apr.eval.quickstart import write_quickstart_report

    path = write_quickstart_report(args.root, args.model)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
