"""A real multi-node Ray cluster on this machine, loopback only, for the tests of distributed stages.

Ray binds some of its ports on every interface of the host, so the cluster runs in a child process inside a
network namespace of its own that has only a loopback device (``unshare -n``; needs root or user namespaces):
nothing it opens can be reached from outside. The child starts the cluster (a head of 0 CPUs, so every task runs
on a worker node, and ``workers`` worker nodes of 1 CPU each, all on 127.0.0.1), connects its driver and then
runs calls sent by the test process, one at a time, returning their results (pickled over a pipe).

A call is a function named ``"module:function"`` (importable from the repository, e.g. ``tests/executors/
_dist.py``); it runs as the cluster's driver and gets the :class:`ray.cluster_utils.Cluster` as its first
argument (to add or remove nodes), then the arguments given (positional and keyword). An exception in it comes back as
:class:`ClusterCallError` with its traceback.

Usage, one cluster per test module::

    @pytest.fixture(scope="module")
    def cluster():
        with ClusterSession(workers=3) as c:
            yield c

    def test_x(cluster):
        assert cluster.off_loopback == []
        got = cluster.call("tests.executors._dist:exact", table)

Run as ``python -m tests._cluster READ_FD WRITE_FD WORKERS STORE_MB HEAD_STORE_MB`` it is the child (inside the
namespace).
"""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


class ClusterCallError(AssertionError):
    """A call on the cluster raised; the message holds the remote traceback."""


def can_isolate() -> bool:
    """Whether a loopback-only network namespace can be made here (``unshare -n`` and ``ip`` work)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return r.returncode == 0


def off_loopback() -> list[str]:
    """The listening TCP/UDP sockets of this process and all its descendants (Ray's processes, when this process
    started the cluster) that are not bound to a loopback address, as ``"pid name ip:port"``."""
    import psutil

    me = psutil.Process()
    bad = []
    for p in [me, *me.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except psutil.Error:  # ended meanwhile
            continue
        for s in conns:
            listening = s.status == psutil.CONN_LISTEN or (s.type == 2 and not s.raddr)  # TCP listen, bound UDP
            ip = s.laddr.ip.removeprefix("::ffff:") if s.laddr else ""
            if listening and ip not in ("127.0.0.1", "::1"):
                bad.append(f"{p.pid} {name} {ip}:{s.laddr.port}")
    return bad


def start(workers: int = 3, store_mb: int = 0, head_store_mb: int = 0):
    """Start a cluster in this process (which should be in a loopback-only namespace) and connect ray to it.
    ``store_mb``: each worker node's object store in MiB, ``head_store_mb`` the head's (0: ``store_mb``; both 0:
    Ray's default, 30% of the machine's memory per node)."""
    import ray
    from ray.cluster_utils import Cluster

    def retried(start_node):
        for attempt in range(3):  # on a loaded machine a node's start can time out (Ray waits 30 s for it)
            try:
                return start_node()
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt == 2:
                    raise

    store = {"object_store_memory": int(store_mb) * 2**20} if store_mb else {}
    head = {"object_store_memory": int(head_store_mb) * 2**20} if head_store_mb else store
    cluster = retried(lambda: Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False, **head}))
    for _ in range(workers):
        retried(lambda: cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", **store))
    ray.init(address=cluster.address, log_to_driver=False, _node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return cluster


def stop(cluster) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


class ClusterSession:
    """The test side: starts the child (the cluster in its namespace), sends it calls, stops it on close."""

    def __init__(self, workers: int = 3, timeout: float = 300, store_mb: int = 0, head_store_mb: int = 0):
        """``store_mb``: each worker node's object store in MiB, ``head_store_mb`` the head's (0: ``store_mb``;
        both 0: Ray's default, 30% of the machine's memory per node, which with several nodes is more than the
        machine has)."""
        self.timeout = timeout
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        # the workers import test functions and operators by name: the repository on every process's path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("RAY_DEDUP_LOGS", "0")
        cmd = (f"ip link set lo up && exec {sys.executable} -m tests._cluster {to_child_r} {from_child_w} "
               f"{int(workers)} {int(store_mb)} {int(head_store_mb)}")
        # the child's (and Ray's) stderr to a file: a pipe nobody reads would block them once it is full
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["unshare", "-n", "sh", "-c", cmd], cwd=ROOT, env=env,
                                     pass_fds=(to_child_r, from_child_w), start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send, self._recv = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        ok, got = self._answer()
        if not ok:
            self.close()
            raise ClusterCallError(f"the cluster did not start:\n{got}")
        self.off_loopback = got  # listening sockets of Ray's processes not on loopback (should be none)

    def stderr_tail(self, n: int = 20000) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-n:]

    def _answer(self):
        if not self._recv.poll(self.timeout):
            raise ClusterCallError(f"no answer from the cluster in {self.timeout} s "
                                   f"(exit code {self.proc.poll()})\n{self.stderr_tail()}")
        try:
            return self._recv.recv()
        except EOFError:
            self.proc.wait(30)
            raise ClusterCallError(f"the cluster process ended (exit code {self.proc.returncode}):\n"
                                   + self.stderr_tail()) from None

    def call(self, fn: str, *args, **kwargs):
        """Run ``fn`` (``"module:function"``) on the cluster's driver with ``(cluster, *args, **kwargs)``; its
        result."""
        try:
            self._send.send((fn, args, kwargs))
        except BrokenPipeError:
            self.proc.wait(30)
            raise ClusterCallError(f"the cluster process ended before {fn} (exit code {self.proc.returncode}):\n"
                                   + self.stderr_tail()) from None
        ok, got = self._answer()
        if not ok:
            raise ClusterCallError(f"{fn} raised on the cluster:\n{got}")
        return got

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send.send(None)
                self.proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:  # the child and any Ray process it left (a node whose start timed out): its own process group
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._send.close()
        self._recv.close()
        self.err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def where(cluster, tasks: int = 6) -> dict:
    """A call: the alive nodes with CPUs and the nodes ``tasks`` small tasks ran on (all on worker nodes)."""
    import ray

    @ray.remote(num_cpus=1)
    def node():
        import time

        time.sleep(0.2)
        return ray.get_runtime_context().get_node_id()

    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
    return {"workers": alive, "ran_on": set(ray.get([node.remote() for _ in range(tasks)]))}


def _child(read_fd: int, write_fd: int, workers: int, store_mb: int = 0, head_store_mb: int = 0) -> None:
    import importlib

    recv, send = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        cluster = start(workers, store_mb, head_store_mb)
        send.send((True, off_loopback()))
    except BaseException:
        send.send((False, traceback.format_exc()))
        raise
    try:
        while (msg := recv.recv()) is not None:
            fn, args, kwargs = msg
            try:
                mod, name = fn.split(":")
                out = (True, getattr(importlib.import_module(mod), name)(cluster, *args, **kwargs))
                pickle.dumps(out)
            except BaseException:
                out = (False, traceback.format_exc())
            send.send(out)
    except EOFError:  # the test process went away
        pass
    finally:
        stop(cluster)


if __name__ == "__main__":
    _child(*map(int, sys.argv[1:6]))
