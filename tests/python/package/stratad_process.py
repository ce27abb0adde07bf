"""A real stratad child process for the package tests, started the way
tests/cluster/stratad_process.cc does: loopback ports chosen by the kernel
(port 0, the UCX data plane too), a data dir of its own, and no sleeps: start()
blocks on the daemon's "stratad ready ..." line on stdout and parses the
addresses from it. (A module of its own, not conftest.py, so that
`from stratad_process import Stratad` is unambiguous next to the other
tests/python folders' conftest files.)"""
import os
import signal
import subprocess


class Stratad:
    """A stratad child process on loopback."""

    def __init__(self, binary, data_dir, flags=(), env=None):
        self.binary = binary
        self.data_dir = str(data_dir)
        self.flags = list(flags)
        self.env = {**os.environ, "UCX_NET_DEVICES": "lo", **(env or {})}
        self.proc = None
        self.grpc_address = self.ucx_address = self.metrics_address = None

    def start(self):
        argv = [self.binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                "--data_plane_listen=127.0.0.1:0", f"--data_dir={self.data_dir}",
                "--log_format=text", "--dram_capacity=256MiB", *self.flags]
        # stdout carries only the ready line; logs go to stderr (inherited,
        # so pytest shows them for a failing test).
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=self.env)
        line = self.proc.stdout.readline().decode().strip()  # Blocks until ready.
        if not line.startswith("stratad ready "):
            self.proc.wait()
            raise RuntimeError(f"stratad did not become ready: {line!r}, "
                               f"exit status {self.proc.returncode}")
        for field in line.split():
            if field.startswith("grpc="):
                self.grpc_address = field[len("grpc="):]
            elif field.startswith("ucx="):
                self.ucx_address = field[len("ucx="):]
            elif field.startswith("metrics="):
                self.metrics_address = field[len("metrics="):]
        return self

    def stop(self):
        """SIGTERM, then wait; returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
        return status

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
