"""Shared helpers and fixtures of the engine-connector tests (docs/connectors.md).

A module of its own name (not conftest) so that test modules can import it unambiguously when
pytest collects several test directories, each with a conftest.py.

These tests need the built `strata` package and torch (plus vLLM / SGLang for their parts); each
test module skips with a reason when something is absent, so the default CI stays green.
tools/vllm_demo.sh --test runs them in the venv that has vLLM, torch and SGLang's base class.

Environment:
  STRATA_PYTHONPATH  directory holding the built package (python/strata with _native);
                     default: the first of build/python, build-py/python that has one
  STRATAD_PATH       the stratad binary; default: build/cluster/stratad
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
CONNECTORS_SRC = REPO / "client" / "python" / "strata" / "connectors"


def _built_package_dir() -> pathlib.Path | None:
    env = os.environ.get("STRATA_PYTHONPATH")
    candidates = [pathlib.Path(env)] if env else [REPO / "build" / "python",
                                                  REPO / "build-py" / "python"]
    if not env:  # a `strata` already on the path (PYTHONPATH) comes first
        import importlib.util
        spec = importlib.util.find_spec("strata")
        if spec is not None and spec.origin:
            candidates.insert(0, pathlib.Path(spec.origin).parent.parent)
    for c in candidates:
        if any((c / "strata").glob("_native*.so")):
            return c
    return None


def _install_overlay() -> str | None:
    """Makes `strata` (the built package) and `strata.connectors` (from the sources) importable.

    The connectors are always taken from client/python/strata/connectors, so the tests check
    the sources even when the build tree holds an older copy.
    """
    built = _built_package_dir()
    if built is None:
        return "the strata package is not built (set STRATA_PYTHONPATH or build it)"
    if str(built) not in sys.path:
        sys.path.insert(0, str(built))
    import importlib.util
    import strata
    spec = importlib.util.spec_from_file_location(
        "strata.connectors", CONNECTORS_SRC / "__init__.py",
        submodule_search_locations=[str(CONNECTORS_SRC)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["strata.connectors"] = module
    spec.loader.exec_module(module)
    strata.connectors = module
    return None


SKIP_REASON = _install_overlay()


def stratad_path() -> pathlib.Path | None:
    p = pathlib.Path(os.environ.get("STRATAD_PATH", REPO / "build" / "cluster" / "stratad"))
    return p if p.exists() else None


class Stratad:
    """A real stratad on free loopback ports in a temp data dir."""

    def __init__(self, binary: pathlib.Path, data_dir: pathlib.Path):
        env = dict(os.environ, UCX_NET_DEVICES="lo")
        self.proc = subprocess.Popen(
            [str(binary), "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             "--data_plane_listen=127.0.0.1:0", f"--data_dir={data_dir}",
             "--dram_capacity=256MiB", "--ssd_capacity=0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("stratad ready") or not line:
                break
        m = re.search(r"grpc=(\S+) metrics=(\S+)", line)
        if not m:
            self.kill()
            raise RuntimeError(f"stratad did not become ready: {line!r}")
        self.addr, self.metrics_addr = m.group(1), m.group(2)

    def metrics(self) -> dict[str, float]:
        """The unlabelled strata:* samples of /metrics."""
        text = urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5).read()
        out = {}
        for line in text.decode().splitlines():
            m = re.match(r"^(strata:[a-z_]+) ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def stratad(tmp_path):
    binary = stratad_path()
    if binary is None:
        pytest.skip("stratad is not built (set STRATAD_PATH)")
    d = Stratad(binary, tmp_path / "stratad-data")
    yield d
    d.kill()


def import_sglang_base():
    """Imports SGLang's HiCacheStorage base class, or returns a skip reason.

    Newer SGLang patches `transformers` at import for its 5.x line; the vLLM venv carries the
    4.x that vLLM needs, so `transformers` is hidden while SGLang's package initialises (the
    patches are a no-op without it) and restored afterwards. Only the storage base class and
    the backend factory are used; no SGLang model code runs.
    """
    missing = object()
    saved = sys.modules.get("transformers", missing)
    try:
        if "sglang" not in sys.modules:
            sys.modules["transformers"] = None  # type: ignore[assignment]
        import sglang.srt.mem_cache.hicache_storage  # noqa: F401
        import sglang.srt.mem_cache.storage.backend_factory  # noqa: F401
    except ImportError as e:
        return f"sglang is not importable: {e}"
    finally:
        if saved is missing:
            sys.modules.pop("transformers", None)
        else:
            sys.modules["transformers"] = saved
    return None
