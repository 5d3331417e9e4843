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
from collections.abc import Callable
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


def queue_consumers(node: str = CLUSTER_NODES[0], prefix: str = "") -> dict[str, int]:
    """Consumers per queue (whose name starts with ``prefix``), as ``rabbitmqctl list_queues``
    on ``node`` reports them (for quorum queues: their leader's count)."""
    rows = json.loads(
        rabbitmqctl(node, "list_queues", "name", "consumers", "--formatter", "json", "-q")
    )
    return {
        str(row["name"]): int(row["consumers"])
        for row in rows
        if str(row["name"]).startswith(prefix)
    }


def consumer_channels(node: str = CLUSTER_NODES[0], prefix: str = "") -> dict[str, list[str]]:
    """The channel (its Erlang pid) of every consumer, per queue whose name starts with
    ``prefix``: two consumers of one queue on one channel is a subscription made twice."""
    rows = json.loads(
        rabbitmqctl(
            node, "list_consumers", "queue_name", "channel_pid", "--formatter", "json", "-q"
        )
    )
    out: dict[str, list[str]] = {}
    for row in rows:
        name = str(row["queue_name"])
        if name.startswith(prefix):
            out.setdefault(name, []).append(str(row["channel_pid"]))
    return out


def connection_names(node: str = CLUSTER_NODES[0]) -> list[tuple[str, int]]:
    """The client-provided name of each of the cluster's connections and the AMQP port of
    the node it is on (aqueue's names say their role and pid: ``aqueue consume <host> pid
    <pid>``); connections without a name are left out."""
    rows = json.loads(
        rabbitmqctl(
            node, "list_connections", "client_properties", "port", "--formatter", "json", "-q"
        )
    )
    names = []
    for row in rows:
        properties = row.get("client_properties") or []
        # [[key, type, value], ...] in the JSON formatter of 3.x
        for entry in properties:
            if isinstance(entry, list) and len(entry) == 3 and entry[0] == "connection_name":
                names.append((str(entry[2]), int(row["port"])))
    return names


def quorum_critical(node: str) -> bool:
    """Whether stopping ``node`` now would leave a quorum queue without a majority (one of
    its replicas elsewhere is down or has not caught up): wait before stopping it."""
    command = ["rabbitmq-queues", "-n", node, "check_if_node_is_quorum_critical", "-q"]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(command)} timed out") from exc
    return result.returncode != 0


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 1.0
) -> None:
    """Poll ``condition`` (a rabbitmqctl call costs an Erlang VM start: poll gently)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ClusterError:
            pass
        if time.monotonic() >= deadline:
            raise ClusterError(f"{what}: not within {timeout}s")
        time.sleep(every)


def restart_node_app(node: str, down_for: float = 3.0, timeout: float = 90) -> dict[str, float]:
    """Restart RabbitMQ on ``node`` the way a rolling restart does: wait until stopping it
    loses no quorum, ``stop_app``, stay down ``down_for`` s, ``start_app``, and wait until
    the other nodes see it running again. Returns when each step happened (time.time())."""
    wait_until(lambda: not quorum_critical(node), timeout, f"{node} is quorum critical")
    times = {"stopping": time.time()}
    stop_node_app(node)
    times["stopped"] = time.time()
    time.sleep(down_for)
    times["starting"] = time.time()
    start_node_app(node, timeout=timeout)
    others = [n for n in CLUSTER_NODES if n != node]
    wait_until(
        lambda: all(node in running_nodes(other) for other in others),
        timeout,
        f"{node} rejoining the cluster",
    )
    times["rejoined"] = time.time()
    return times


def ensure_all_running() -> None:
    """Start RabbitMQ again on any cluster node where only the Erlang node runs (after a
    test's stop_app); a cold or broken cluster is left to ensure_cluster()."""
    seen = set()
    for node in CLUSTER_NODES:
        try:
            seen.update(running_nodes(node))
            break
        except ClusterError:
            continue
    for node in CLUSTER_NODES:
        if node not in seen:
            try:
                start_node_app(node)
            except ClusterError:
                ensure_cluster()
                return


def restart_node(node: str, down_for: float = 3.0, timeout: float = 180) -> dict[str, float]:
    """Restart ``node`` whole (its Erlang VM too) with ``scripts/cluster.sh restart-node``:
    it waits until stopping it loses no quorum, shuts it down, boots it again after
    ``down_for`` s with its data, and waits until the others see it running. Returns when
    it began and when the node had rejoined (time.time())."""
    number = str(CLUSTER_NODES.index(node) + 1)
    times = {"stopping": time.time()}
    try:
        result = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "restart-node", number, f"{down_for:g}"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"cluster.sh restart-node {number} timed out") from exc
    if result.returncode != 0:
        raise ClusterError(f"cluster.sh restart-node {number} failed:\n{result.stdout}")
    times["rejoined"] = time.time()
    return times
