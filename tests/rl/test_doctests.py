"""The examples in the docstrings of apr.rl run."""

import doctest
import importlib

import pytest

MODULES = ["apr.rl.config", "apr.rl.weights", "apr.rl.batch", "apr.rl.rollout", "apr.rl.algos",
           "apr.train.collectives"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
