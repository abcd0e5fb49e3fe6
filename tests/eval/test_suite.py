"""Settings per model, multi-sample resume, and a whole suite run over a scripted engine."""

import json

import pytest

from apr.api import Reasoner
from apr.config import ConfigError
from apr.engine.scripted import ScriptedEngine
from apr.eval import EvalConfig, Setting, evaluate, plan_settings, run_suite
from apr.eval.suite import check_fingerprint, rl_pairs
from apr.task import CountdownConfig, generate_problems
from tests._replay import solver_replay


def names(model, cfg):
    return [s.name for s in plan_settings(model, cfg)]


def test_plan_settings():
    cfg = EvalConfig(conditions={"apr": ["threads 2", "threads 4"], "sosp": ["budget 512"]})
    assert names("apr", cfg) == ["t0", "t0.5", "t1", "t0_threads-2", "t0_threads-4"]
    assert names("apr_rl", cfg) == names("apr", cfg)  # inherits its SFT model's conditioning
    assert names("sosp", cfg) == ["t0", "t0.5", "t0_budget-512", "t1_n8"]  # T=1 read from the 8 samples
    assert names("sosp_rl", cfg) == names("sosp", cfg)
    assert names("other", cfg) == ["t0", "t0.5", "t1"]
    off = EvalConfig(temperatures=(0.0,), cons_pass_n=0, conditions={"apr_rl": ["threads 8"]})
    assert names("sosp", off) == ["t0"] and names("apr_rl", off) == ["t0", "t0_threads-8"] and names("apr", off) == ["t0"]
    assert names("sosp", EvalConfig(temperatures=(0.0,), cons_pass_n=4)) == ["t0", "t1_n4"]


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match="eval.conditions.apr"):
        EvalConfig(conditions={"apr": "threads 2"})
    with pytest.raises(ConfigError, match="eval.temperatures"):
        EvalConfig(temperatures=(-1.0,))
    with pytest.raises(ConfigError, match="eval.cons_pass_temperature"):
        EvalConfig(cons_pass_temperature=0.0)
    with pytest.raises(ConfigError, match="setting.num_samples"):
        Setting(num_samples=0)


def test_rl_pairs_and_fingerprint(tmp_path):
    assert rl_pairs(["sosp", "apr", "apr_rl", "x_rl"]) == {"apr": "apr_rl"}
    fp = {"data": {"split": "test"}, "limits": {"max_thread_tokens": 64}, "models": {"apr": "/a"}}
    check_fingerprint(tmp_path, fp)
    check_fingerprint(tmp_path, {**fp, "models": {"sosp": "/s"}})  # another model may join the run
    assert json.loads((tmp_path / "fingerprint.json").read_text())["models"] == {"apr": "/a", "sosp": "/s"}
    with pytest.raises(ConfigError, match="models.apr"):
        check_fingerprint(tmp_path, {**fp, "models": {"apr": "/b"}})
    with pytest.raises(ConfigError, match="limits"):
        check_fingerprint(tmp_path, {**fp, "limits": {"max_thread_tokens": 128}})


@pytest.fixture(scope="module")
def scripted(tokenizer):
    """Problems and a reasoner whose engine replays the APR solver's traces (no model)."""
    problems = generate_problems(CountdownConfig(num_numbers=4), 5, seed=3)
    traces, script = solver_replay(problems, tokenizer)

    def make():
        return Reasoner(ScriptedEngine(script), tokenizer)

    return problems, traces, make


def test_multi_sample_resume_redoes_partial_problems(tmp_path, scripted):
    problems, traces, make = scripted
    cfg = EvalConfig(max_thread_tokens=100_000, windows=(1024,), batch_size=2, progress=False)
    path = tmp_path / "s.jsonl"
    first = evaluate(make(), problems[:2], cfg, path, Setting(1.0, None, 3))
    assert [(r.problem_index, r.sample_index) for r in first] == [(p, s) for p in range(2) for s in range(3)]
    # an interrupted run: problem 1 has 2 of its 3 samples, then a torn line
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + '\n{"torn": ')
    reasoner = make()
    out = evaluate(reasoner, problems, cfg, path, Setting(1.0, None, 3))
    assert len(out) == 15 and [r.correct for r in out[::3]] == [t.solved for t in traces]
    assert reasoner.engine.stats.num_steps > 0
    assert len(path.read_text().splitlines()) == 15
    # fewer problems asked for: only theirs come back, nothing runs
    reasoner = make()
    assert evaluate(reasoner, problems[:2], cfg, path, Setting(1.0, None, 3)) == out[:6]
    assert reasoner.engine.stats.num_steps == 0


def test_run_suite_writes_records_per_setting_and_resumes(tmp_path, scripted):
    problems, traces, make = scripted
    cfg = EvalConfig(max_thread_tokens=100_000, windows=(512, 100_000), temperatures=(0.0, 1.0), cons_pass_n=2,
                     conditions={"apr": ["threads 2"]}, batch_size=4, progress=False)
    loaded = []

    def load(path):
        loaded.append(make())
        return loaded[-1]

    models = {"sosp": "ckpt/s", "apr": "ckpt/a"}
    summary = run_suite(models, load, problems, cfg, tmp_path, data={"split": "test"})
    assert sorted(p.name for p in tmp_path.glob("records_*.jsonl")) == [
        "records_apr_t0.jsonl", "records_apr_t0_threads-2.jsonl", "records_apr_t1.jsonl", "records_sosp_t0.jsonl",
        "records_sosp_t1_n2.jsonl"]
    # the condition line reached the prompt: the script does not know it, so the model answers nothing
    cond = summary["models"]["apr"]["settings"]["t0_threads-2"]
    assert cond["condition"] == "threads 2" and cond["accuracy"] == 0.0 and cond["mean_child_threads"] == 0
    s = summary["models"]["sosp"]["settings"]
    assert list(s) == ["t0", "t1_n2"] and s["t1_n2"]["num_records"] == 10
    solved = sum(t.solved for t in traces) / len(traces)
    assert s["t0"]["accuracy"] == pytest.approx(solved)
    assert [p["pass"] for p in s["t1_n2"]["curve"]] == [pytest.approx(solved)] * 2  # the script is deterministic
    assert s["t1_n2"]["curve"][1]["mean_total_tokens"] == pytest.approx(2 * s["t0"]["mean_total_tokens"])
    assert summary["data"] == {"split": "test", "num_problems": 5} and summary["rl_pairs"] == {}
    assert "curve" not in summary["models"]["apr"]["settings"]["t1"]
    # resume: every problem of every setting is on disk, so no engine does any work
    loaded.clear()
    again = run_suite(models, load, problems, cfg, tmp_path, data={"split": "test"})
    assert again == summary and all(r.engine.stats.num_steps == 0 for r in loaded)
    with pytest.raises(ConfigError, match="models.sosp"):
        run_suite({"sosp": "ckpt/other"}, load, problems, cfg, tmp_path, data={"split": "test"})


def test_run_suite_closes_each_engine_before_the_next_loads(tmp_path, scripted):
    problems, _, make = scripted
    cfg = EvalConfig(max_thread_tokens=100_000, windows=(100_000,), temperatures=(0.0,), batch_size=4,
                     progress=False)
    events = []

    def load(path):
        events.append(f"load {path}")
        reasoner = make()
        reasoner.engine.close = lambda: events.append(f"close {path}")
        return reasoner

    run_suite({"sosp": "ckpt/s", "apr": "ckpt/a"}, load, problems, cfg, tmp_path)
    assert events == ["load ckpt/s", "close ckpt/s", "load ckpt/a", "close ckpt/a"]


def test_stale_records_are_never_reused(tmp_path, scripted):
    """Regenerated problems, or a retrained checkpoint at the same path, are refused rather than matched by index."""
    problems, _, make = scripted
    cfg = EvalConfig(max_thread_tokens=100_000, windows=(1024,), temperatures=(0.0,), cons_pass_n=0,
                     batch_size=4, progress=False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights of the first training")
    out = tmp_path / "out"
    run_suite({"apr": str(ckpt)}, lambda p: make(), problems[:3], cfg, out, data={"split": "test"})
    run_suite({"apr": str(ckpt)}, lambda p: make(), problems, cfg, out, data={"split": "test"})  # more problems: fine
    regenerated = generate_problems(CountdownConfig(num_numbers=4), 5, seed=4)
    with pytest.raises(ConfigError, match="data_dir: problem 0 differs from the one .* holds records of"):
        run_suite({"apr": str(ckpt)}, lambda p: make(), regenerated, cfg, out, data={"split": "test"})
    (ckpt / "model.safetensors").write_bytes(b"weights of the second training")
    with pytest.raises(ConfigError, match="models.apr: .* holds other weights than when .* recorded its results"):
        run_suite({"apr": str(ckpt)}, lambda p: make(), problems, cfg, out, data={"split": "test"})
