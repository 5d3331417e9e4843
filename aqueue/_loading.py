"""Finding the broker from ``MODULE[:ATTRIBUTE]`` arguments on the command line."""

from __future__ import annotations

import importlib
import os
import sys

from . import _default_broker
from .broker import Broker, get_broker


class LoadError(Exception):
    """A module or attribute named on the command line cannot be used."""


def load_broker(specs: list[str]) -> Broker:
    """Import every module of ``specs`` and return the broker they name.

    The broker is the attribute named after ``:`` in a spec, else the first module's
    ``broker`` attribute, else the default broker. A module's broker without actors while
    the default broker has some is a LoadError that says how to declare them.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so local modules import
    named: list[Broker] = []
    fallback: Broker | None = None
    origins: dict[int, tuple[str, str]] = {}  # id(broker) -> (module, attribute), the first
    for spec in specs:
        module_name, _, attribute = spec.partition(":")
        if not module_name:
            raise LoadError(f"{spec!r}: expected MODULE or MODULE:ATTRIBUTE")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LoadError(f"cannot import {module_name!r}: {exc}") from exc
        except Exception as exc:  # the module itself is broken, e.g. a bad @actor option
            raise LoadError(
                f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if attribute:
            try:
                obj = getattr(module, attribute)
            except AttributeError:
                raise LoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
            if not isinstance(obj, Broker):
                raise LoadError(f"{spec} is a {type(obj).__name__}, not an aqueue broker")
            named.append(obj)
            origins.setdefault(id(obj), (module_name, attribute))
        elif fallback is None and isinstance(getattr(module, "broker", None), Broker):
            fallback = module.broker
            origins.setdefault(id(fallback), (module_name, "broker"))
    if len({id(b) for b in named}) > 1:
        raise LoadError("the modules name different brokers; a worker runs one broker")
    chosen = named[0] if named else fallback
    if chosen is None:
        return get_broker()
    _check_actors_are_on(chosen, *origins[id(chosen)])
    return chosen


def _check_actors_are_on(broker: Broker, module_name: str, attribute: str) -> None:
    """LoadError if ``broker`` has no actors but the default broker has: a common slip."""
    default = _default_broker.broker  # not get_broker(): that would make one
    if broker.actors or default is None or default is broker or not default.actors:
        return
    names = ", ".join(sorted(default.actors))
    raise LoadError(
        f"module {module_name!r} defines broker `{attribute}`, but its actors ({names}) were "
        "registered on the default broker (aqueue.get_broker()): declare them with "
        f"@{attribute}.actor, or @aqueue.actor(broker={attribute}), or call "
        f"aqueue.set_broker({attribute}) before declaring them"
    )
