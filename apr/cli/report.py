"""Write `<root>/REPORT.md` for a quickstart-style run directory (data/, sft/, sft_sosp/, rl/, eval/).

    python -m apr.cli.report --root runs/quickstart
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="apr report", description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/quickstart", help="the run directory holding data/, sft/, sft_sosp/, rl/, eval/")
    p.add_argument("--model", default=None, help="checkpoint for the example tree (default: rl/final, else sft/final)")
    args = p.parse_args(argv)
    from pathlib import Path

    from apr.config import ConfigError
    from apr.eval.quickstart import write_quickstart_report

    parts = ("data", "sft", "sft_sosp", "rl", "eval")
    try:
        if not Path(args.root).is_dir() or not any((Path(args.root) / d).is_dir() for d in parts):
            raise ConfigError(f"--root: {args.root!r} is not a run directory holding any of {', '.join(parts)}; "
                              "accepted: the root of a quickstart-style run, e.g. runs/quickstart after "
                              "`make quickstart`")
        path = write_quickstart_report(args.root, args.model)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
