"""RemoteStore against a real stratad started by the test (conftest.Stratad):
the same contract as LocalStore, over gRPC, the UCX data plane, the socket
data plane and its local connections with the shared arena."""
import os
import tempfile

import numpy as np
import pytest

import strata
import store_cases
from stratad_process import Stratad


@pytest.fixture(params=["grpc", "ucx", "tcp", "local"])
def store(request, stratad_binary, scratch_dir):
    # The other planes over a private arena, as a remote client's daemon.
    flags = ["--local_data_plane_path="]
    with tempfile.TemporaryDirectory(prefix="strata-sock-") as sock_dir:
        if request.param == "local":  # A short path: sockaddr_un holds 107.
            flags = [f"--local_data_plane_path={sock_dir}/stratad.sock"]
        daemon = Stratad(stratad_binary, scratch_dir / "stratad", flags).start()
        try:
            s = strata.RemoteStore(daemon.grpc_address, deadline_ms=10000,
                                   data_plane=request.param)
            assert s.data_plane.startswith(request.param)
            yield s
            s.close()
        finally:
            daemon.kill()


@pytest.mark.parametrize("case", store_cases.ALL_CASES, ids=lambda c: c.__name__)
def test_store_contract(store, case):
    case(store)


def test_local_daemon_uid_refuses_another_users_daemon(stratad_binary,
                                                      scratch_dir):
    # local_daemon_uid names the user the daemon must run as: another's
    # arena is refused ("local" raises naming the option, "auto" takes the
    # next plane); the right one is used.
    with tempfile.TemporaryDirectory(prefix="strata-sock-") as sock_dir:
        flags = [f"--local_data_plane_path={sock_dir}/stratad.sock"]
        daemon = Stratad(stratad_binary, scratch_dir / "uid", flags).start()
        try:
            with pytest.raises(strata.Unavailable, match="local_daemon_uid"):
                strata.RemoteStore(daemon.grpc_address, data_plane="local",
                                   local_daemon_uid=os.geteuid() + 1)
            with strata.RemoteStore(daemon.grpc_address,
                                    local_daemon_uid=os.geteuid() + 1) as s:
                assert not s.data_plane.startswith("local")
            with strata.RemoteStore(daemon.grpc_address, data_plane="local",
                                    local_daemon_uid=os.geteuid()) as s:
                assert s.data_plane == "local"
            for not_a_uid in (-1, 2**32 - 1, 2**40):
                with pytest.raises(strata.InvalidArgument,
                                   match="local_daemon_uid"):
                    strata.RemoteStore(daemon.grpc_address,
                                       local_daemon_uid=not_a_uid)
        finally:
            daemon.kill()


def test_large_blocks_land_in_numpy_arrays(store):
    blk = strata.encode_kv(np.random.default_rng(3).standard_normal(
        (8, 2, 256, 4, 128)).astype(np.float16))  # 4 MiB.
    key = bytes(range(16))
    assert store.put(key, blk)
    out = np.empty(len(blk), np.uint8)
    assert store.get_into(key, out) == len(blk)
    assert out.tobytes() == blk
    np.testing.assert_array_equal(strata.decode_kv(out), strata.decode_kv(blk))


def test_stats_name_the_data_plane(store):
    s = store.stats()
    assert s["data_plane"] == store.data_plane
    assert "version" in s and s["uptime_ms"] >= 0


def test_durable_blocks_survive_a_daemon_restart(stratad_binary, scratch_dir):
    keys, blocks = store_cases.make_blocks(3)
    data_dir = scratch_dir / "restart"
    daemon = Stratad(stratad_binary, data_dir).start()
    try:
        with strata.RemoteStore(daemon.grpc_address) as s:
            assert s.batch_put(keys, blocks, durable=True) == [True] * 3
        assert daemon.stop() == 0
        daemon = Stratad(stratad_binary, data_dir).start()  # New ports.
        with strata.RemoteStore(daemon.grpc_address) as s:
            assert s.leading_hits(keys) == 3
            p = s.prefetch(keys)
            assert p.result(timeout_s=30) == blocks
    finally:
        daemon.kill()


def test_unreachable_daemon_raises_unavailable(stratad_binary, scratch_dir):
    daemon = Stratad(stratad_binary, scratch_dir / "gone").start()
    address = daemon.grpc_address
    daemon.kill()  # The port is now closed.
    s = strata.RemoteStore(address, deadline_ms=2000, data_plane="grpc", max_attempts=2)
    with pytest.raises((strata.Unavailable, strata.DeadlineExceeded)):
        s.get(bytes(16))
    s.close()


def _pending_bytes_to(port):
    """Bytes waiting in the receive queues of sockets bound to local `port`."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED.
                total += int(fields[4].split(":")[1], 16)
    return total


def test_a_blocking_call_releases_the_gil(stratad):
    # The daemon is stopped (SIGSTOP), so get() blocks in C++ until a Python
    # thread resumes it. That thread resumes it only after it has seen the
    # request bytes queued at the daemon's socket, i.e. while get() is inside
    # the C++ call: it can only run then if get() released the GIL. Holding
    # the GIL would end in DeadlineExceeded instead.
    import os
    import signal
    import threading
    import time

    keys, blocks = store_cases.make_blocks(1)
    port = int(stratad.grpc_address.rsplit(":", 1)[1])
    with strata.RemoteStore(stratad.grpc_address, deadline_ms=20000, data_plane="grpc",
                            max_attempts=1) as s:
        s.put(keys[0], blocks[0])
        assert s.get(keys[0]) == blocks[0]  # Connection up and idle.
        seen = threading.Event()

        def resume_when_request_is_queued():
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if _pending_bytes_to(port) > 0:
                    seen.set()
                    break
            os.kill(stratad.proc.pid, signal.SIGCONT)

        os.kill(stratad.proc.pid, signal.SIGSTOP)
        os.waitpid(stratad.proc.pid, os.WUNTRACED)  # Returns once it is stopped.
        t = threading.Thread(target=resume_when_request_is_queued)
        t.start()
        try:
            got = s.get(keys[0])
        finally:
            t.join()
            os.kill(stratad.proc.pid, signal.SIGCONT)
        assert seen.is_set(), "the request never reached the stopped daemon's socket"
        assert got == blocks[0]
