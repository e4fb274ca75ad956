"""Worker processes of a MultiWorkerMirroredStrategy cluster on 127.0.0.1, for tests and
``bench/sharding.py``."""

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_configs(num_workers: int) -> list[str]:
    """The ``TF_CONFIG`` of each worker of a new cluster on free ports of 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(num_workers)]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        for index in range(num_workers)
    ]


def start_workers(
    argv: Callable[[int], Sequence[str]],
    env: Mapping[str, str],
    cwd: Callable[[int], str],
    num_workers: int = 2,
) -> list[subprocess.Popen]:
    """Starts ``python argv(i)`` in ``cwd(i)`` as worker ``i`` of a new cluster (its
    ``TF_CONFIG`` set), stdout and stderr piped together."""
    procs = []
    try:
        for index, tf_config in enumerate(tf_configs(num_workers)):
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv(index)],
                    cwd=cwd(index),
                    env=dict(env, TF_CONFIG=tf_config),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs


def run_workers(
    argv: Callable[[int], Sequence[str]],
    env: Mapping[str, str],
    cwd: Callable[[int], str],
    timeout: float,
    num_workers: int = 2,
) -> list[str]:
    """Runs ``python argv(i)`` in ``cwd(i)`` as worker ``i`` (its ``TF_CONFIG`` set),
    waits for all, and returns their outputs (stdout and stderr); every worker
    must exit with status 0. No worker outlives the call."""
    procs = start_workers(argv, env, cwd, num_workers)
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outputs
