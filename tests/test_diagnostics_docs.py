"""The runnable examples in the diagnostics docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["__init__", "_label_issues", "_cross_fit", "_label_callback", "_state", "_hessian", "_perturb", "_edge",
           "_sharpness_monitor", "_landscape"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("lightning_optkit.diagnostics" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
