"""The README's commands, as written, are valid: every `python -m apr.cli.<command>` / `apr <command>`
line (and inline command) composes with Hydra and parses into the typed configs, the way the entry
point does before it starts anything. (The commands themselves run in tests/cli at toy size.)"""

import re
import shlex
from pathlib import Path

import pytest

from apr.cli.common import compose
from apr.config import from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    """argv lists (command first) of the README's apr commands, code blocks and inline code alike."""
    text = README.read_text()
    lines = [line.strip() for line in text.splitlines() if line.startswith("    ")]
    lines += re.findall(r"`((?:python -m apr\.cli\.|apr )[^`]+)`", text)
    out = []
    for line in lines:
        if not (line.startswith("python -m apr.cli.") or line.startswith("apr ")):
            continue
        argv = shlex.split(line, comments=True)
        if "..." in argv or any("<" in a or "|" in a for a in argv):  # an elided or templated example
            continue
        argv = argv[2:] if argv[0] == "python" else argv
        command = argv[0].removeprefix("apr.cli.") if argv[0].startswith("apr.cli.") else argv[1]
        args = argv[1 if argv[0].startswith("apr.cli.") else 2:]
        if args:  # a bare `apr solve` in prose names the command; it is not an example to run
            out.append([command, *args])
    return out


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_a_newcomer_needs():
    kinds = {c[0] for c in COMMANDS}
    assert {"data", "sft", "rl", "eval", "solve"} <= kinds
    flat = [" ".join(c) for c in COMMANDS]
    assert any("+sft=n3_tiny_apr" in c for c in flat)  # the model the RL example starts from is trained
    assert any(c.startswith("rl ") and "init=runs/sft/n3_tiny_apr/final" in c for c in flat)
    for kind in ("rl", "eval", "solve"):
        assert any(c.startswith(kind) and "engine=sglang" in c for c in flat), kind
        assert any(c.startswith(kind) and ("engine.device=cuda" in c or "--device cuda" in c) for c in flat), kind


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:80] for c in COMMANDS])
def test_readme_command_loads(argv):
    command, args = argv[0], argv[1:]
    if command == "solve":
        from apr.cli.solve import engine_from_args, parse_args

        engine_from_args(parse_args(args))
        return
    c = compose(command, args)
    c.pop("hydra", None)
    if command == "sft":
        from apr.cli.sft import load_config

        load_config(c)
    elif command == "rl":
        from apr.rl.config import RLConfig

        from_dict(RLConfig, c, "")
    elif command == "eval":
        from apr.engine.config import engine_config
        from apr.eval import EvalConfig

        from_dict(EvalConfig, c["eval"], "eval")
        engine_config(c["engine"])
    elif command == "data":
        from apr.datagen import DataConfig
        from apr.task import CountdownConfig

        from_dict(CountdownConfig, c["task"], "task")
        from_dict(DataConfig, c["data"], "data")
