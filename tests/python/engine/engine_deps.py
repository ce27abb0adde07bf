"""Dependency checks for the mini engine tests, importable by the test
modules under a name no other test folder uses (a plain `import conftest`
would pick up another folder's conftest when pytest runs several folders)."""

import importlib.util

import pytest


def _need(module, why):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {why}", allow_module_level=True)


def require_engine_deps():
    """Skips the calling test module unless torch and strata import."""
    _need("torch", "run tools/engine_test.sh (it creates a venv with CPU torch)")
    try:
        import strata  # noqa: F401
        strata.LocalStore  # the built package, not a stray namespace dir
    except (ImportError, AttributeError) as e:
        pytest.skip(f"the strata package does not import ({e}); build it and set "
                    "PYTHONPATH=<build>/python (tools/engine_test.sh does)",
                    allow_module_level=True)
