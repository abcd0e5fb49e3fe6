import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "apr.cli.data", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_data_cli_end_to_end(tmp_path):
    out = tmp_path / "d"
    r = run_cli("task=countdown_n3", "data.num_train=20", "data.num_val=5", "data.num_test=5",
                f"data.out_dir={out}", "data.progress=false", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["sosp"]["num_problems"] == 20
    assert (out / ".hydra" / "config.yaml").exists()  # the resolved config is saved with the data
    assert "| apr |" in r.stdout
    # Hydra's per-run log holds the run's own lines (it was created empty)
    log = (out / "data.log").read_text()
    assert "| apr |" in log and f"wrote {out}" in log


def test_a_refused_data_run_writes_nothing(tmp_path):
    """Refused before Hydra creates the run directory (apr.cli.common.Preflight): no log, no .hydra/."""
    out = tmp_path / "out"
    r = run_cli("task.num_numbers=1", f"data.out_dir={out}", cwd=ROOT)
    assert r.returncode == 2 and "task.num_numbers" in r.stderr
    assert not out.exists()


def test_an_error_during_a_run_lands_in_the_run_log(tmp_path):
    """Once a run has started, its console lines and its error line go to Hydra's per-run log too."""
    import logging

    import pytest

    from apr.cli.common import run_clean
    from apr.config import ConfigError

    handler = logging.FileHandler(tmp_path / "data.log")
    logging.getLogger().handlers.insert(0, handler)  # before pytest's own file handler

    def run():
        print("working")
        raise ConfigError("data.x: bad")

    try:
        with pytest.raises(SystemExit) as exit_:
            run_clean(run)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert exit_.value.code == 2
    assert (tmp_path / "data.log").read_text() == "working\nerror: data.x: bad\n"


def test_data_cli_bad_input_is_one_clear_line(tmp_path):
    r = run_cli("task.num_numbers=1", f"data.out_dir={tmp_path}", cwd=ROOT)
    assert r.returncode == 2
    assert "task.num_numbers" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("solvers.sosp.heuristics=[sum,cosine]", f"data.out_dir={tmp_path}", cwd=ROOT)
    assert r.returncode == 2 and "solvers.sosp.heuristics" in r.stderr


def test_apr_console_entry(tmp_path):
    from apr.cli.main import main

    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0


def test_an_existing_data_set_is_refused_and_overwrite_moves_it_aside(tmp_path):
    # probe (issue 26 item 2): data.out_dir=<an existing set> replaced 20,000 problems by 20, without a word
    out = tmp_path / "d"
    small = ("task=countdown_n3", "data.num_val=5", "data.num_test=5", f"data.out_dir={out}", "data.progress=false")
    assert run_cli("data.num_train=20", *small, cwd=ROOT).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run_cli("data.num_train=8", *small, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data.out_dir: '{out}' already holds a data set "
                                                   "(stats.json, train, val, test, tokenizer); accepted:")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    r = run_cli("data.num_train=8", "overwrite=true", *small, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    aside = tmp_path / "d.replaced"
    assert f"moved the earlier {out} to {aside}" in r.stdout
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == before
    assert json.loads((out / "stats.json").read_text())["train"]["sosp"]["num_problems"] == 8
    # an interrupted generation (no stats.json yet) is moved aside without asking: make quickstart resumes
    (out / "stats.json").unlink()
    r = run_cli("data.num_train=8", *small, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.replaced2" / "train").is_dir() and (out / "stats.json").is_file()
