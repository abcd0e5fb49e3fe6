"""Imports flow one way (DESIGN.md's data flow) and `import apr` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "apr"
# DESIGN.md's order: a module imports only from its own layer or layers above it.
# `config` (typed config helpers) sits on top; `datagen` (data sets of traces) after the tokenizer; `train`
# (the training core) above `sft`; `scoring` (solve problems and score them, for SFT, RL and eval alike)
# after the api it drives.
LAYERS = ["config", "net", "task", "search", "protocol", "tokenizer", "datagen", "model", "train", "sft", "engine",
          "runtime", "api", "scoring", "rl", "cluster", "eval", "cli"]
# runtime/ and engine/ know token ids, not Countdown.
FORBIDDEN = {"engine": {"task", "search", "tokenizer", "datagen"}, "runtime": {"task", "search", "datagen"}}
HEAVY_ONLY_IN = {"ray": {"cluster", "cli"}, "deepspeed": {"train", "cli"}}


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    name = rel[0].removesuffix(".py")
    return name


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_imports_flow_one_way():
    problems = []
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        layer = layer_of(path)
        if layer not in LAYERS:
            problems.append(f"{path}: layer {layer!r} is not in DESIGN.md's data flow (add it to LAYERS)")
            continue
        for mod in imported_modules(path):
            top = mod.split(".")[0]
            if top == "apr" and "." in mod:
                target = mod.split(".")[1]
                if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                    problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {mod} ({target}, a lower layer)")
                if target in FORBIDDEN.get(layer, ()):
                    problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {mod}: it must not know the task")
            if top in HEAVY_ONLY_IN and layer not in HEAVY_ONLY_IN[top]:
                problems.append(f"{path.relative_to(ROOT)} imports {top}")
    assert not problems, "\n".join(problems)


def test_import_apr_is_light():
    code = ("import sys, apr, apr.task, apr.search, apr.protocol, apr.config; "
            "heavy = [m for m in ('ray', 'deepspeed', 'wandb', 'torch', 'transformers', 'sglang') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import apr pulled in: {out}"


# `sft` is a trainer, not a shared layer: what SFT and RL share lives in `train`.
MAY_IMPORT_SFT = {"sft", "eval", "cli"}


def test_only_the_edges_import_sft():
    problems = []
    for path in ROOT.rglob("*.py"):
        layer = layer_of(path)
        for mod in imported_modules(path):
            if mod == "apr.sft" or mod.startswith("apr.sft."):
                if layer not in MAY_IMPORT_SFT:
                    problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {mod}")
    assert not problems, "\n".join(problems)


def test_every_package_says_what_it_owns():
    """Each package's __init__.py opens with a docstring saying what it owns (a newcomer's map)."""
    missing = []
    for init in sorted(ROOT.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        if not doc or len(doc.split("\n")[0]) < 20:
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, f"no docstring saying what the package owns: {missing}"
