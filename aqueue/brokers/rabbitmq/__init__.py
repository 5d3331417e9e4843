"""RabbitMQ: connections by role, publishing, consuming and acks, declarations, dead letters.

Modules, bottom to top: ``errors`` and ``urls`` (plain helpers), ``flow_control`` (the
``connection.blocked`` hook), ``connections`` (a connection per role over the URL list),
``declarations``, ``publisher``, ``acker`` and ``consumer``, ``dead_letters``, and
``broker`` (``RabbitmqBroker``, which puts them together).
"""

from .acker import _Acker, _RabbitmqDelivery
from .broker import RabbitmqBroker
from .urls import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE

__all__ = [
    "DEFAULT_URL",
    "URL_ENVIRONMENT_VARIABLE",
    "RabbitmqBroker",
    "_Acker",
    "_RabbitmqDelivery",
]
