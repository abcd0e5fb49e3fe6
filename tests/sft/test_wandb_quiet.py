"""wandb (offline by default) keeps quiet: its own ~30 lines at the end of every run go to its log files
under <run_dir>/wandb/, and the console gets one line of ours saying where the run is and how to upload it."""

from apr.sft.config import WandbConfig
from apr.train.metrics import MetricsLog, read_metrics


def test_offline_wandb_prints_one_line_of_ours(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = MetricsLog(tmp_path, WandbConfig(mode="offline"), "quiet", {"lr": 1e-3})
    for step in (1, 2):
        log.log({"train/loss": 1.0 / step}, step)
    log.close()
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wandb: offline run in ") and "wandb sync" in lines[0], lines
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert any((tmp_path / "wandb").rglob("*.wandb"))  # the offline run itself is still written
