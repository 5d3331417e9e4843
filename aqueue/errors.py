"""The exceptions aqueue raises.

Every error derives from :class:`AqueueError`::

    AqueueError
    ├── ActorDefinitionError      bad @actor options, names or signature (raised at decoration time)
    ├── ValidationError           arguments that do not fit the actor's type hints
    ├── ActorNotFound             a message names an actor this broker does not know
    ├── MessageDecodeError        a body that is not a valid aqueue message
    ├── BrokerError
    │   ├── BrokerConnectionError the broker cannot be reached (after bounded retries or waiting)
    │   │   └── BrokerBlockedError RabbitMQ blocks publishing during a memory or disk alarm
    │   └── PublishError          the broker did not take a message
    │       ├── UnroutableError   no queue is bound for it (returned under ``mandatory``)
    │       └── NackedError       the broker answered the publish with a negative confirm
    ├── WorkerError               the worker cannot start (no actors, unknown queues)
    ├── ActorError                an actor run by ``call()`` failed for good (remote type, text)
    └── TimeLimitExceeded         an actor ran past its time_limit (recorded as its failure)
"""

from __future__ import annotations

__all__ = [
    "ActorDefinitionError",
    "ActorError",
    "ActorNotFound",
    "AqueueError",
    "BrokerBlockedError",
    "BrokerConnectionError",
    "BrokerError",
    "MessageDecodeError",
    "NackedError",
    "TimeLimitExceeded",
    "PublishError",
    "UnroutableError",
    "ValidationError",
    "WorkerError",
]


class AqueueError(Exception):
    """Base class of every aqueue error."""


class ActorDefinitionError(AqueueError, TypeError):
    """An actor was declared with an unknown option, a bad name or an unsupported signature."""


class ValidationError(AqueueError, TypeError, ValueError):
    """Arguments do not match the actor's signature or type hints.

    Raised by ``send()`` before anything is published, and used by the worker to
    dead-letter a message whose arguments cannot be decoded.
    """


class ActorNotFound(AqueueError, LookupError):
    """A message names an actor that is not registered with the broker."""


class MessageDecodeError(AqueueError, ValueError):
    """A message body is not a valid aqueue message."""


class BrokerError(AqueueError):
    """Something went wrong talking to the message broker."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker could not be reached, or not within the allowed time."""


class BrokerBlockedError(BrokerConnectionError):
    """RabbitMQ blocked the publishing connection (a memory or disk alarm).

    The message was handed to the connection but not confirmed within ``publish_timeout``:
    RabbitMQ may still queue it when the alarm clears.
    """


class PublishError(BrokerError):
    """The broker did not accept a published message."""


class UnroutableError(PublishError):
    """The broker returned a message because no queue is bound for its routing key."""


class NackedError(PublishError):
    """The broker answered a publish with a negative acknowledgement."""


class WorkerError(AqueueError):
    """A worker cannot start with the given configuration."""


class ActorError(AqueueError):
    """The actor awaited with ``call()`` failed, and no retry was left (or it was skipped).

    Attributes:
        actor_name: The actor that failed.
        type_name: The name of the exception type it raised (``"ValueError"``).
        text: The exception's text (``str(exc)``).
        traceback: The traceback text, as the worker formatted it (empty if none).
    """

    def __init__(self, actor_name: str, type_name: str, text: str, traceback: str = "") -> None:
        super().__init__(f"actor {actor_name} failed: {type_name}: {text}")
        self.actor_name = actor_name
        self.type_name = type_name
        self.text = text
        self.traceback = traceback


class TimeLimitExceeded(AqueueError):
    """An actor ran longer than its ``time_limit`` and was cancelled or interrupted."""
