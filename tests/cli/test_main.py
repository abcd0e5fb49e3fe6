"""The `apr` command: usage, and an unknown command named as such."""

import pytest

from apr.cli.main import COMMANDS, main


def test_unknown_command_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "model=tiny"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: apr: unknown command 'train'; accepted: " + ", ".join(COMMANDS)


def test_no_command_prints_usage_and_fails(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "usage: apr" in capsys.readouterr().err


def test_help_prints_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "usage: apr" in capsys.readouterr().out
