"""The examples in the engine's docstrings run."""

import doctest
import importlib

import pytest

MODULES = ["apr.engine.base", "apr.engine.kv_cache", "apr.engine.sequence", "apr.engine.sampler",
           "apr.engine.local", "apr.engine.config", "apr.engine.kv_budget", "apr.engine.cuda_graph",
           "apr.engine.rows", "apr.engine.local_config"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
