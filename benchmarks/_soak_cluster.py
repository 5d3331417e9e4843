"""The chaos soak's hands on the 3-node test cluster of ``scripts/cluster.sh``.

Only the cluster's nodes (aqueue-c1..c3@localhost, AMQP 5681-5683) are ever named: every
``rabbitmqctl`` call passes ``-n`` with one of them, so the default node on 5672 is never
touched. (Benchmarks do not import tests: this repeats a little of ``tests/_cluster.py``.)
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "cluster.sh"
NODES = ["aqueue-c1@localhost", "aqueue-c2@localhost", "aqueue-c3@localhost"]
PORTS = [5681, 5682, 5683]
#: The only node the soak raises a resource alarm on.
ALARM_NODE = "aqueue-c2@localhost"
#: vm_memory_high_watermark when it cannot be read (RabbitMQ's default; cluster.sh sets none).
DEFAULT_WATERMARK = 0.4


class ClusterError(RuntimeError):
    """The cluster script or a RabbitMQ CLI tool failed."""


def cluster_urls() -> list[str]:
    return [f"amqp://guest:guest@127.0.0.1:{port}/" for port in PORTS]


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(command)} timed out after {timeout}s") from exc


def rabbitmqctl(node: str, *args: str, timeout: float = 60) -> str:
    if node not in NODES:
        raise ValueError(f"{node} is not a node of the test cluster")
    result = _run(["rabbitmqctl", "-n", node, *args], timeout)
    if result.returncode != 0:
        raise ClusterError(
            f"rabbitmqctl -n {node} {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def start_cluster(timeout: float = 180) -> None:
    """``scripts/cluster.sh start``: start or repair the cluster (quick when it runs)."""
    result = _run(["bash", str(CLUSTER_SCRIPT), "start"], timeout)
    if result.returncode != 0:
        raise ClusterError(f"cluster.sh start failed:\n{result.stdout}{result.stderr}")


def running_nodes(seen_by: str) -> list[str]:
    status = json.loads(rabbitmqctl(seen_by, "cluster_status", "--formatter", "json"))
    return [str(n) for n in status.get("running_nodes", [])]


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 1.0
) -> None:
    """Poll ``condition``; every CLI call starts an Erlang VM, so not too often."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ClusterError):
            if condition():
                return
        if time.monotonic() >= deadline:
            raise ClusterError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def quorum_critical(node: str) -> bool:
    """Whether stopping ``node`` now would leave a quorum queue without a majority."""
    if node not in NODES:
        raise ValueError(f"{node} is not a node of the test cluster")
    command = ["rabbitmq-queues", "-n", node, "check_if_node_is_quorum_critical", "-q"]
    return _run(command, 60).returncode != 0


def app_running(node: str) -> bool:
    command = ["rabbitmq-diagnostics", "-n", node, "-q", "check_running"]
    return _run(command, 60).returncode == 0


def start_app(node: str, timeout: float = 120) -> None:
    """``start_app``, then wait until the node runs and the other nodes see it."""
    rabbitmqctl(node, "start_app", timeout=timeout)
    rabbitmqctl(node, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
    others = [n for n in NODES if n != node]
    wait_until(
        lambda: all(node in running_nodes(o) for o in others),
        timeout,
        f"{node} rejoining the cluster",
    )


def restart_node(node: str, down_for: float, notes: dict[str, float]) -> None:
    """A rolling restart's step: wait until stopping ``node`` loses no quorum, ``stop_app``,
    ``down_for`` s down, ``start_app``, wait until it rejoined. ``notes``: when."""
    wait_until(lambda: not quorum_critical(node), 120, f"{node} quorum critical")
    notes["quorum safe, stop_app"] = time.time()
    rabbitmqctl(node, "stop_app", timeout=120)
    notes["stopped"] = time.time()
    try:
        time.sleep(down_for)
    finally:
        notes["start_app"] = time.time()
        start_app(node)
    notes["rejoined"] = time.time()


def restart_whole_node(node: str, down_for: float, notes: dict[str, float]) -> None:
    """The same step with the whole node (its Erlang VM shut down and booted again, as a pod
    or host restart does): ``scripts/cluster.sh restart-node`` (it waits for quorum safety
    first, then until the node rejoined)."""
    number = str(NODES.index(node) + 1)
    result = _run(["bash", str(CLUSTER_SCRIPT), "restart-node", number, f"{down_for:.1f}"], 300)
    if result.returncode != 0:
        raise ClusterError(
            f"cluster.sh restart-node {number} failed:\n{result.stdout}{result.stderr}"
        )
    notes["rejoined"] = time.time()


def ensure_running() -> None:
    """Start the app again wherever only the Erlang node runs (an interrupted restart)."""
    for node in NODES:
        with contextlib.suppress(ClusterError):
            if not app_running(node):
                start_app(node)


def watermark(node: str) -> float:
    out = rabbitmqctl(node, "eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    try:
        return float(out.strip())
    except ValueError:
        return DEFAULT_WATERMARK  # an absolute watermark ({absolute, N}): not ours to set


def alarms(node: str) -> str:
    return rabbitmqctl(node, "eval", "rabbit_alarm:get_alarms().").strip()


@contextlib.contextmanager
def memory_alarm(notes: dict[str, float], node: str = ALARM_NODE) -> Iterator[None]:
    """A memory alarm on ``node`` only (a watermark of 0.0001), its previous watermark
    restored on the way out, whatever happens. RabbitMQ blocks publishing connections on
    every node of *that* cluster while it lasts."""
    if node != ALARM_NODE:
        raise ValueError(f"alarms are raised on {ALARM_NODE} only")
    previous = watermark(node)
    try:
        rabbitmqctl(node, "set_vm_memory_high_watermark", "0.0001")
        notes["watermark set"] = time.time()
        with contextlib.suppress(ClusterError):
            wait_until(lambda: "memory" in alarms(node), 15, "memory alarm", every=0.5)
            notes["alarm raised"] = time.time()
        yield
    finally:
        restore_watermark(node, previous)
        notes["watermark restored"] = time.time()
        with contextlib.suppress(ClusterError):
            wait_until(lambda: "memory" not in alarms(node), 30, "alarm cleared", every=0.5)
            notes["alarm cleared"] = time.time()


def restore_watermark(node: str = ALARM_NODE, value: float = DEFAULT_WATERMARK) -> None:
    # Retried: the restore must not be lost to a slow CLI call on a busy machine.
    for attempt in range(5):
        try:
            rabbitmqctl(node, "set_vm_memory_high_watermark", str(value))
            return
        except ClusterError:
            if attempt == 4:
                raise
            time.sleep(2)
