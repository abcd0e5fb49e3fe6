"""Hydra and argparse entry points only (no logic): `apr data|sft|rl|eval|solve|report`.

Importing this package (which every entry point does before torch loads) sets `OMP_WAIT_POLICY=PASSIVE`
unless the user set it: torch's OpenMP threads otherwise spin while they wait, which makes runs
typed from the README 2-3x slower on a few shared cores (ray workers inherit it too).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
