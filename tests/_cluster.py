"""Helpers for tests against the local 3-node RabbitMQ cluster run by scripts/cluster.sh.

The cluster (aqueue-c1..c3@localhost, AMQP on 127.0.0.1:5681-5683) is separate from the default
node on 5672. rabbitmqctl is the Debian wrapper: run as root it switches to the rabbitmq user,
so it uses that user's Erlang cookie, the one the cluster nodes use too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "cluster.sh"

CLUSTER_NODES = ["aqueue-c1@localhost", "aqueue-c2@localhost", "aqueue-c3@localhost"]
CLUSTER_PORTS = [5681, 5682, 5683]
CLUSTER_HOST = "127.0.0.1"

# A cold start takes about 20-30 s; the script gives up after 120 s by itself.
START_TIMEOUT = 180.0


class ClusterError(RuntimeError):
    """The cluster script or rabbitmqctl failed."""


def cluster_urls() -> list[str]:
    return [f"amqp://guest:guest@{CLUSTER_HOST}:{port}/" for port in CLUSTER_PORTS]


def node_of_port(port: int) -> str:
    """The node that serves AMQP on `port`."""
    try:
        return CLUSTER_NODES[CLUSTER_PORTS.index(port)]
    except ValueError:
        raise ValueError(f"{port} is not a cluster port ({CLUSTER_PORTS})") from None


def port_of_node(node: str) -> int:
    try:
        return CLUSTER_PORTS[CLUSTER_NODES.index(node)]
    except ValueError:
        raise ValueError(f"{node} is not a cluster node ({CLUSTER_NODES})") from None


def ensure_cluster(timeout: float = START_TIMEOUT) -> None:
    """Start the cluster, or repair it, and wait until its 3 nodes run clustered."""
    try:
        result = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "start"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode()
        raise ClusterError(f"cluster.sh start timed out after {timeout}s:\n{output}") from exc
    if result.returncode != 0:
        raise ClusterError(f"cluster.sh start failed ({result.returncode}):\n{result.stdout}")


def rabbitmqctl(node: str, *args: str, timeout: float = 60) -> str:
    """Run `rabbitmqctl -n node args...` and return its stdout."""
    command = ["rabbitmqctl", "-n", node, *args]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(command)} timed out after {timeout}s") from exc
    if result.returncode != 0:
        raise ClusterError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return result.stdout


def port_accepts(port: int, host: str = CLUSTER_HOST, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_node_app(node: str) -> None:
    """Stop RabbitMQ on `node`, keeping its Erlang node (and cluster membership)."""
    rabbitmqctl(node, "stop_app")


def start_node_app(node: str, timeout: float = 60) -> None:
    """Start RabbitMQ on `node` again; return once it runs and its AMQP port accepts TCP."""
    deadline = time.monotonic() + timeout
    rabbitmqctl(node, "start_app", timeout=timeout)
    port = port_of_node(node)
    while True:
        remaining = deadline - time.monotonic()
        try:
            rabbitmqctl(node, "await_startup", "--timeout", "10", timeout=max(remaining, 1))
            if port_accepts(port):
                return
        except ClusterError:
            pass
        if time.monotonic() >= deadline:
            raise ClusterError(f"{node} did not start within {timeout}s (AMQP port {port})")
        time.sleep(0.2)


def running_nodes(node: str = CLUSTER_NODES[0]) -> list[str]:
    """The cluster nodes with RabbitMQ running, as `node` sees them."""
    status = json.loads(rabbitmqctl(node, "cluster_status", "--formatter", "json"))
    return [str(name) for name in status.get("running_nodes", [])]
