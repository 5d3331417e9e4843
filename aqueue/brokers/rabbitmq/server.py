"""What differs by RabbitMQ version: the server's version and the rules of 4.x.

RabbitMQ tells its version when a connection opens (``server_properties``); the broker
keeps it. Three things aqueue does depend on it, and this module is where they are
decided, as pure functions:

* the delivery limit of quorum queues: none by default up to 3.13, 20 from 4.0
  (aqueue declares it explicitly, so its queues behave the same on both);
* what a consumer timeout does: close the channel (up to 4.2, every queue type), cancel
  the consumer (4.3, quorum queues only) or nothing (4.3, classic queues);
* what 4.3 refuses to declare (:func:`refused_by_rabbitmq_4_3`), which the test suite
  checks against everything aqueue declares on a running node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "QUORUM_DEFAULT_DELIVERY_LIMIT",
    "ServerVersion",
    "consumer_timeout_action",
    "default_delivery_limit",
    "format_version",
    "parse_version",
    "refused_by_rabbitmq_4_3",
    "server_version_of",
]

#: (major, minor, patch) of a RabbitMQ node, e.g. (3, 10, 8).
ServerVersion = tuple[int, int, int]

#: RabbitMQ 4.0 and later give quorum queues declared without ``x-delivery-limit`` this limit.
QUORUM_DEFAULT_DELIVERY_LIMIT = 20

_VERSION = re.compile(r"\s*(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: object) -> ServerVersion | None:
    """``(4, 3, 0)`` of ``"4.3.0"`` (also ``"4.3.0-rc.1"``, ``b"3.10.8"``); None if unreadable."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode(errors="replace")
    if not isinstance(text, str):
        return None
    match = _VERSION.match(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def server_version_of(server_properties: Mapping[str, Any] | None) -> ServerVersion | None:
    """The version in a connection's ``server_properties``, if it is RabbitMQ's."""
    if not server_properties:
        return None
    product = server_properties.get("product")
    if isinstance(product, bytes):
        product = product.decode(errors="replace")
    if product is not None and "rabbitmq" not in str(product).lower():
        return None  # another AMQP 0-9-1 server (LavinMQ, ...): its versions mean other things
    return parse_version(server_properties.get("version"))


def format_version(version: ServerVersion | None) -> str:
    return "unknown" if version is None else ".".join(str(part) for part in version)


def default_delivery_limit(version: ServerVersion | None) -> int | None:
    """The delivery limit RabbitMQ gives a quorum queue declared without one (None: no limit).

    An unknown version is taken for a recent one.
    """
    if version is not None and version < (4, 0, 0):
        return None
    return QUORUM_DEFAULT_DELIVERY_LIMIT


ConsumerTimeoutAction = Literal["channel closed", "consumer cancelled", "none"]


def consumer_timeout_action(
    version: ServerVersion | None, queue_type: str
) -> ConsumerTimeoutAction:
    """What RabbitMQ does when a delivery stays unacknowledged past ``consumer_timeout``.

    Up to 4.2 it closes the consumer's channel (PRECONDITION_FAILED), for every queue type.
    From 4.3 only quorum queues evaluate the timeout, and they cancel the consumer
    (``basic.cancel``: aiormq announces ``consumer_cancel_notify``); classic
    queues no longer time out at all. Either way aqueue's consumer subscribes again and
    RabbitMQ redelivers the message.
    """
    if version is not None and version < (4, 3, 0):
        return "channel closed"
    return "consumer cancelled" if queue_type == "quorum" else "none"


def refused_by_rabbitmq_4_3(
    *, durable: bool, exclusive: bool, arguments: Mapping[str, Any]
) -> list[str]:
    """Why RabbitMQ 4.3 would refuse to declare a queue like this; empty if it would not.

    The rules: transient (non-durable) queues must be exclusive (transient non-exclusive
    queues are denied by default); ``x-queue-mode`` is gone (lazy mode); classic queues
    v1 are gone (``x-queue-version: 1``); ``x-consumer-timeout`` is refused on classic
    queues (4.3.2). (Classic mirroring, removed in 4.0, was set by policies, not here.)
    """
    reasons = []
    queue_type = arguments.get("x-queue-type", "classic")
    if isinstance(queue_type, bytes):
        queue_type = queue_type.decode()
    if not durable and not exclusive:
        reasons.append("transient non-exclusive queue (denied by default since 4.3)")
    if "x-queue-mode" in arguments:
        reasons.append("x-queue-mode (lazy mode removed; declaring it fails since 4.3)")
    if str(arguments.get("x-queue-version", "")) == "1":
        reasons.append("x-queue-version 1 (classic queues v1 removed in 4.3)")
    if "x-consumer-timeout" in arguments and queue_type == "classic":
        reasons.append("x-consumer-timeout on a classic queue (refused since 4.3.2)")
    return reasons
