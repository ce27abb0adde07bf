"""Fixtures of the strata package tests (tests/python/package).

`stratad` starts a real daemon (stratad_process.Stratad); STRATAD_PATH names
the binary (ctest sets it); without it the RemoteStore tests skip.
"""
import os
import pathlib
import tempfile

import pytest

from stratad_process import Stratad


@pytest.fixture
def scratch_dir():
    """A fresh directory under STRATA_TEST_TMPDIR (else the system temp dir)."""
    base = os.environ.get("STRATA_TEST_TMPDIR")
    if base:
        pathlib.Path(base).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="strata-py-", dir=base) as d:
        yield pathlib.Path(d)


@pytest.fixture
def stratad_binary():
    path = os.environ.get("STRATAD_PATH")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("STRATAD_PATH does not name a stratad binary")
    return path


@pytest.fixture
def stratad(stratad_binary, scratch_dir):
    daemon = Stratad(stratad_binary, scratch_dir / "stratad").start()
    yield daemon
    daemon.kill()
