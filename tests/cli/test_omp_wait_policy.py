"""Entry points set OMP_WAIT_POLICY=PASSIVE before torch loads, unless the user set it: commands typed
from the README ran 2-3x slower than under make, whose Makefile exported it (spinning OpenMP threads)."""

import os
import subprocess
import sys

import pytest

CODE = ("import os, sys, importlib; importlib.import_module(sys.argv[1]); "
        "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")


def probe(module: str, **env_over) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_over)
    return subprocess.run([sys.executable, "-c", CODE, module], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


@pytest.mark.parametrize("module", ["apr.cli.main", "apr.cli.sft", "apr.cli.rl", "apr.cli.eval", "apr.cli.data",
                                    "apr.cli.solve"])
def test_entry_points_set_passive_before_torch_loads(module):
    assert probe(module) == "False PASSIVE"  # set, and torch not yet loaded (libgomp reads it at load)


def test_the_users_setting_wins():
    assert probe("apr.cli.sft", OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"


def test_importing_apr_alone_leaves_the_environment_alone():
    assert probe("apr.api").endswith(" None")
