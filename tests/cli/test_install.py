"""A non-editable install works outside the checkout: the wheel carries conf/ (as apr/conf/) and every
entry point finds its configs, through the `apr` console script and `python -m apr.cli.<command>`.

Builds the wheel from a copy of the checkout (nothing is written into it), installs it with --no-deps
into a fresh venv whose only other packages are the running interpreter's (a .pth line: nothing is
downloaded, torch is not reinstalled), and runs the commands from a directory outside the checkout.
~30-60 s on 2 busy cores: marked slow (still in the default run)."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, cwd, env, timeout=300):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("apr", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src],
             tmp, env)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("apr-*.whl")
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    assert r.returncode == 0, r.stderr
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
                   .stdout.strip())
    # the dependencies (torch, hydra, ...) from the running interpreter's site-packages, after the venv's own
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "zz_shared_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    r = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel], tmp, env)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp / "work"  # outside the checkout: nothing there to find conf/ by
    work.mkdir()
    env = {**env, "OMP_WAIT_POLICY": "PASSIVE", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return venv, work, env


@pytest.mark.slow
def test_installed_wheel_runs_every_entry_point_outside_the_checkout(installed):
    venv, work, env = installed
    python, apr = venv / "bin" / "python", venv / "bin" / "apr"
    where = _run([python, "-c", "import apr, apr.cli.common as c; print(apr.__file__); print(c.config_dir())"],
                 work, env)
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(conf) == Path(module).parent / "conf", where.stdout
    for command in ("data", "sft", "rl", "eval"):
        r = _run([apr, command, "--help"], work, env)
        assert r.returncode == 0 and "Configuration groups" in r.stdout, (command, r.stderr[-2000:])
    r = _run([apr, "data", "task=countdown_n3", "data.num_train=10", "data.num_val=3", "data.num_test=3",
              "data.num_workers=1", "data.out_dir=d", "data.progress=false"], work, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((work / "d" / "stats.json").read_text())["train"]["apr"]["num_problems"] == 10
    r = _run([python, "-m", "apr.cli.sft", "+sft=n3_tiny_apr", "engine.device=cpu", "--cfg", "job"], work, env)
    assert r.returncode == 0 and "name: n3_tiny_apr" in r.stdout and "engine:" in r.stdout, r.stderr[-2000:]
    r = _run([apr, "solve", "--model", "nope", "--numbers", "1", "2", "--target", "3", "engine=sglang"], work, env)
    assert r.returncode == 2 and "no config.json" in r.stderr  # the engine group composed; then the model is missing
