"""The examples in the docstrings of apr.sft and apr.model run."""

import doctest
import importlib

import pytest

MODULES = ["apr.model.hf", "apr.sft.config", "apr.sft.data", "apr.sft.packing", "apr.train.optim", "apr.train.metrics",
           "apr.train.strategy", "apr.train.device", "apr.train.config", "apr.net"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
