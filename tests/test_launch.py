"""launch/ scripts cannot run here (no GPUs, no Slurm, no cloud): their syntax and shape are checked."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def test_there_are_launch_scripts():
    assert {p.name for p in SCRIPTS} >= {"slurm_rl.sh", "sft_multi_gpu.sh"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_opens_with_its_command(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    head = "\n".join(lines[1:12])
    assert "python -m apr.cli" in head or "-m apr.cli" in head, "the header shows the command it runs"
    assert "Resources assumed" in script.read_text()


def test_slurm_script_starts_ray_and_joins_it():
    text = (LAUNCH / "slurm_rl.sh").read_text()
    assert "#SBATCH --nodes" in text and "ray\" start --head" in text and "ray\" start --address" in text
    assert "dist=ray_cluster" in text


def test_ray_cluster_config_is_a_valid_cluster_launcher_config():
    config = yaml.safe_load((LAUNCH / "ray_cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert "ray up launch/ray_cluster.yaml" in (LAUNCH / "ray_cluster.yaml").read_text()
    jsonschema = pytest.importorskip("jsonschema")
    autoscaler = pytest.importorskip("ray.autoscaler")
    schema = json.loads((Path(autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # Ray's own schema for `ray up` (no unknown fields)


def test_launch_readme_names_every_file():
    readme = (LAUNCH / "README.md").read_text()
    for path in LAUNCH.iterdir():
        if path.name != "README.md":
            assert path.name in readme, path.name
