"""Every bad input gets one clear line naming the field (or file) and what is accepted, exit code 2, and a
refused run writes nothing, not even Hydra's `.hydra/` record (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from apr.cli.common import to_container
from apr.config import ConfigError, from_dict
from apr.sft.config import SFTConfig
from tests.rl._setup import make_checkpoint, make_data

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def cli(command: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", f"apr.cli.{command}", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line(r: subprocess.CompletedProcess, starts: str) -> str:
    """The run exited 2 with exactly one line on stderr, starting with `starts`."""
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), r.stderr[-3000:]
    return lines[0]


def composed(name: str, *overrides: str) -> dict:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return to_container(compose(name, overrides=list(overrides)))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("bad_inputs")
    return make_checkpoint(tokenizer, root / "init"), make_data(root / "data")


def test_a_refused_sft_run_leaves_the_earlier_record_untouched(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("earlier: run\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- earlier=run\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = {p.name: p.read_text() for p in run_dir.rglob("*") if p.is_file()}
    r = cli("sft", f"run_dir={run_dir}", "optim.lr=0.5")
    one_line(r, f"error: run_dir: '{run_dir}' already holds a run (metrics.jsonl); accepted: resume=true")
    assert {p.name: p.read_text() for p in run_dir.rglob("*") if p.is_file()} == before  # no sft.log either


def test_run_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "a_file").write_text("")
    r = cli("sft", f"run_dir={tmp_path / 'a_file' / 'run'}")
    one_line(r, f"error: run_dir: '{tmp_path / 'a_file' / 'run'}' cannot be created")


def test_sft_data_dir_without_val_problems(tmp_path, tokenizer):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "sosp.jsonl").write_text("")
    tokenizer.save_pretrained(data / "tokenizer")
    r = cli("sft", f"data.dir={data}", f"run_dir={tmp_path / 'run'}")
    one_line(r, f"error: data.dir: '{data}' has no val/problems.jsonl for the solve-rate evaluation")
    assert not (tmp_path / "run").exists()


def test_rl_without_init_names_the_field(tmp_path):
    one_line(cli("rl", f"run_dir={tmp_path / 'run'}"), "error: init: not given; accepted: the directory of an SFT")
    assert not (tmp_path / "run").exists()


def test_rl_missing_init_is_refused_before_any_actor_starts(tmp_path):
    r = cli("rl", "init=/nope", "dist=ray_local", f"run_dir={tmp_path / 'run'}")
    one_line(r, "error: init: '/nope' has no config.json; accepted: the directory of an SFT checkpoint")
    assert not (tmp_path / "run").exists()  # no Ray temp dir, no .hydra


def test_rl_ray_cluster_without_a_cluster(tmp_path, assets, monkeypatch):
    from apr.net import free_port

    init, data = assets
    address = f"127.0.0.1:{free_port()}"  # nothing listens there (`auto` could find a colleague's cluster)
    r = cli("rl", f"init={init}", f"data.dir={data}", "dist=ray_cluster", f"dist.address={address}",
            f"run_dir={tmp_path / 'run'}", "wandb.mode=disabled")
    one_line(r, f"error: dist.address: no running Ray cluster found at '{address}'; accepted: the address of a")
    # `auto` with no cluster: Ray's ConnectionError becomes the same line
    import ray

    from apr.cluster import ray_cluster

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ConfigError, match="dist.address: no running Ray cluster found at 'auto'"):
        ray_cluster._join_cluster("auto")


def test_eval_bad_num_problems_writes_nothing(tmp_path, assets):
    init, data = assets
    base = [f"models.apr={init}", f"data_dir={data}", "split=val", f"out_dir={tmp_path / 'out'}"]
    one_line(cli("eval", *base, "num_problems=abc"), "error: num_problems: got 'abc'; accepted: a positive integer")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="num_problems: got -3; accepted: a positive integer, or null"):
        from apr.cli.eval import preflight

        preflight(composed("eval", *base, "num_problems=-3"))


def test_eval_settings_that_measure_nothing(tmp_path, assets):
    from apr.cli.eval import preflight

    init, data = assets
    base = [f"models.apr={init}", f"data_dir={data}", "split=val", f"out_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=r"eval.temperatures: got \[\], so model 'apr' runs no setting"):
        preflight(composed("eval", *base, "eval.temperatures=[]", "eval.cons_pass_n=0"))
    with pytest.raises(ConfigError, match=r"eval.windows: got \[\]; accepted: a non-empty list"):
        preflight(composed("eval", *base, "eval.windows=[]"))
    # fine (within the test model's 512 positions: the default 1,024-token window is refused, see below)
    preflight(composed("eval", *base, "eval.temperatures=[0.0]", "eval.cons_pass_n=0", "eval.max_thread_tokens=512",
                       "eval.windows=[256,512]"))


def test_eval_damaged_model_names_the_file(tmp_path, assets):
    import shutil

    from apr.cli.eval import preflight

    init, data = assets
    model = tmp_path / "model"
    shutil.copytree(init, model)
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="models.apr: .* is damaged: model.safetensors: .*truncated"):
        preflight(composed("eval", f"models.apr={model}", f"data_dir={data}", "split=val",
                           f"out_dir={tmp_path / 'out'}"))


def test_report_root_missing(tmp_path, capsys):
    from apr.cli.report import main

    with pytest.raises(SystemExit) as e:
        main(["--root", str(tmp_path / "missing")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --root: '{tmp_path / 'missing'}' is not a run directory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_solve_on_cuda_with_a_cpu_torch(capsys, assets):
    from apr.cli.solve import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(assets[0]), "--numbers", "1", "2", "3", "--target", "6", "--device", "cuda"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device: got 'cuda'; accepted: cpu here: this torch") and len(err.splitlines()) == 1


def test_max_steps_type_error_reads_like_the_docs():
    with pytest.raises(ConfigError, match="^train.max_steps: got 'abc'; accepted: an integer or null$"):
        from_dict(SFTConfig, {"train": {"max_steps": "abc"}}, "")


def test_data_refuses_at_once_what_would_hang(tmp_path):
    from apr.cli.data import preflight

    r = cli("data", "task.num_numbers=20", f"data.out_dir={tmp_path / 'd'}")
    one_line(r, "error: task.num_numbers: got 20; accepted: an integer from 2 to 7 for data generation")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match=r"data.num_train: got 1000000000; accepted: at most ~[\d,]+: countdown_n4 "
                                          r"has at most [\d,]+ distinct problems"):
        preflight(composed("data", "data.num_train=1000000000", f"data.out_dir={tmp_path / 'd'}"))
    preflight(composed("data", "data.num_train=1000", f"data.out_dir={tmp_path / 'd'}"))  # the default is fine
    assert json.loads(json.dumps(composed("data")["task"]))["num_numbers"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_a_cuda_engine_config_composes_on_a_cpu_node_and_fails_where_it_is_built(assets):
    """The RL driver on a CPU-only head node parses engine.device=cuda for its GPU workers; only building
    the engine on a machine without CUDA is refused, naming the field."""
    from apr.engine.local import LocalEngine, LocalEngineConfig
    from apr.model import load_checkpoint

    cfg = LocalEngineConfig(device="cuda", max_seq_len=64)
    assert cfg.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="^engine.device: got 'cuda'; accepted: cpu here"):
        LocalEngine(load_checkpoint(assets[0])[0], cfg)


def _nan_in_place(model_dir: Path, count: int = 16) -> str:
    """Set `count` floats of one weight to NaN, the file's size unchanged; returns the tensor's name."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    size = path.stat().st_size
    tensors = load_file(path)
    name = sorted(k for k in tensors if "layers.0" in k)[0]
    tensors[name].view(-1)[:count] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    assert path.stat().st_size == size
    return name


def test_weights_damaged_in_place_are_never_used(tmp_path, assets):
    # probe (issue 26 item 4): 16 floats set to NaN, size unchanged: solve and eval loaded the checkpoint,
    # decoded <pad> and reported 0%; the manifest's hashes were never checked
    import shutil

    from apr.api import Reasoner
    from apr.cli.eval import preflight
    from apr.model import load_checkpoint
    from apr.model.integrity import write_manifest

    init, data = assets
    model = tmp_path / "model"
    shutil.copytree(init, model)
    write_manifest(model)
    name = _nan_in_place(model)
    with pytest.raises(ConfigError, match="model: .* is damaged: model.safetensors: .*sha256 mismatch"):
        Reasoner.from_pretrained(str(model))
    with pytest.raises(ConfigError, match="models.apr: .* is damaged: model.safetensors: .*sha256 mismatch"):
        preflight(composed("eval", f"models.apr={model}", f"data_dir={data}", "split=val",
                           f"out_dir={tmp_path / 'out'}"))
    with pytest.raises(ConfigError, match="sha256 mismatch"):
        load_checkpoint(model)
    # without a manifest (another tool wrote it): the loaded weights are checked instead
    (model / "manifest.json").unlink()
    with pytest.raises(ConfigError, match=rf"model: .* holds non-finite weights \({name} has NaN or inf\)"):
        Reasoner.from_pretrained(str(model))
    with pytest.raises(ConfigError, match=rf"holds non-finite weights \({name}"):
        load_checkpoint(model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_rl_asking_a_local_cluster_for_a_gpu_on_a_cpu_machine_is_one_line(tmp_path, assets):
    init, data = assets
    r = cli("rl", f"init={init}", f"data.dir={data}", f"run_dir={tmp_path / 'run'}", "dist=ray_local",
            "dist.worker_gpus=1")
    one_line(r, "error: dist: the run asks a local Ray cluster for 2 GPUs (dist.worker_gpus=2")
    assert not (tmp_path / "run").exists()


def test_windows_longer_than_the_models_positions_are_refused_everywhere(tmp_path, assets):
    # probe (issue 26 item 7): `apr eval` at 4,096 and `apr solve --max-thread-tokens 3000` ran on a model of
    # fewer positions (SFT refuses the same setting)
    from apr.api import Reasoner
    from apr.cli.eval import preflight
    from apr.runtime import RuntimeConfig

    init, data = assets
    positions = json.loads((init / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ConfigError, match=rf"^eval.max_thread_tokens: got {positions + 1}; accepted: at most "
                                          rf"{positions}, the model's max_position_embeddings"):
        preflight(composed("eval", f"models.apr={init}", f"data_dir={data}", "split=val",
                           f"eval.max_thread_tokens={positions + 1}", f"eval.windows=[{positions + 1}]",
                           f"out_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=rf"^max_thread_tokens \(--max-thread-tokens, runtime\): got "
                                          rf"{positions + 1}; accepted: at most {positions}"):
        Reasoner.from_pretrained(str(init), runtime=RuntimeConfig(max_thread_tokens=positions + 1))
    Reasoner.from_pretrained(str(init), runtime=RuntimeConfig(max_thread_tokens=positions))  # the whole window


def test_eval_names_of_models_that_are_not_in_the_run_are_refused(tmp_path, assets):
    # probe (issue 26, "silently accepted"): misspelt model names in eval.cons_pass_models / eval.conditions
    from apr.cli.eval import preflight

    init, data = assets
    base = [f"models.apr={init}", f"models.sosp={init}", f"data_dir={data}", "split=val", f"out_dir={tmp_path / 'o'}",
            "eval.max_thread_tokens=512", "eval.windows=[256,512]"]
    with pytest.raises(ConfigError, match=r"^eval.conditions.aprr: got 'aprr', no model of this run \(did you mean "
                                          r"'apr'\?\); accepted: names among apr, sosp"):
        preflight(composed("eval", *base, "+eval.conditions.aprr=[threads 2]"))
    with pytest.raises(ConfigError, match=r"^eval.cons_pass_models: got 'sops', no model of this run \(did you mean "
                                          r"'sosp'\?\)"):
        preflight(composed("eval", *base, "eval.cons_pass_models=[sops]"))
    preflight(composed("eval", *base, "+eval.conditions.apr=[threads 2]", "eval.cons_pass_models=[sosp]"))
    assert not (tmp_path / "o").exists()
