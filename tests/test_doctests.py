"""The examples in docstrings run (modules outside apr.task; tests/task covers its own)."""

import doctest
import importlib

import pytest

MODULES = ["apr.config", "apr.search.trace", "apr.search.heuristics", "apr.search.solvers", "apr.protocol",
           "apr.tokenizer", "apr.model.integrity", "apr.scoring", "apr.runtime.thread"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0
