"""aqueue: an asyncio-native task queue for RabbitMQ.

Put ``@aqueue.actor`` on a function, ``await fn.send(...)`` from your service and
run ``aqueue worker your.module``.
"""

from importlib.metadata import PackageNotFoundError, version

from . import _default_broker
from ._default_broker import get_broker, set_broker
from .actor import Actor, actor
from .broker import Broker
from .brokers.memory import InMemoryBroker
from .brokers.rabbitmq import RabbitmqBroker
from .composition import Group, Pipeline, group, pipeline
from .context import MessageContext, current_message
from .dead_letters import DeadLetter
from .errors import (
    ActorDefinitionError,
    ActorError,
    ActorNotFound,
    AqueueError,
    BrokerBlockedError,
    BrokerConnectionError,
    BrokerError,
    MessageDecodeError,
    NackedError,
    PublishError,
    TimeLimitExceeded,
    UnroutableError,
    ValidationError,
    WorkerError,
)
from .limits import Limit
from .message import Message
from .middleware import Middleware, SkipMessage
from .schedules import Schedule, schedule
from .worker import Worker

# The default broker is a RabbitmqBroker on AQUEUE_BROKER_URL; the modules below this one
# cannot name it, so it is registered here.
_default_broker.set_default_factory(RabbitmqBroker)

try:
    __version__ = version("aqueue")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    # actors and messages
    "Actor",
    "Message",
    "actor",
    "current_message",
    # workflows
    "Group",
    "Pipeline",
    "group",
    "pipeline",
    # limits (the Limits middleware applies them)
    "Limit",
    # schedules
    "Schedule",
    "schedule",
    # brokers
    "Broker",
    "InMemoryBroker",
    "RabbitmqBroker",
    "get_broker",
    "set_broker",
    "DeadLetter",
    # middleware (the built-in ones are in aqueue.middleware)
    "Middleware",
    "MessageContext",
    "SkipMessage",
    # workers
    "Worker",
    # errors
    "ActorDefinitionError",
    "ActorError",
    "ActorNotFound",
    "AqueueError",
    "BrokerBlockedError",
    "BrokerConnectionError",
    "BrokerError",
    "MessageDecodeError",
    "NackedError",
    "PublishError",
    "TimeLimitExceeded",
    "UnroutableError",
    "ValidationError",
    "WorkerError",
    "__version__",
]
