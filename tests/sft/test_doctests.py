"""The examples in the docstrings of apr.sft and apr.model run."""

import doctest
import importlib

import pytest

MODULES = ["apr.model.hf", "apr.sft.config", "apr.sft.data", "apr.sft.packing", "apr.sft.optim", "apr.sft.metrics",
           "apr.sft.strategy"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
