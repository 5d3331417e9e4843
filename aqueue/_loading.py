"""Finding the broker from ``MODULE[:ATTRIBUTE]`` arguments on the command line."""

from __future__ import annotations

import importlib
import os
import sys

from .broker import Broker, get_broker


class LoadError(Exception):
    """A module or attribute named on the command line cannot be used."""


def load_broker(specs: list[str]) -> Broker:
    """Import every module of ``specs`` and return the broker they name.

    The broker is the attribute named after ``:`` in a spec, else the first module's
    ``broker`` attribute, else the default broker.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so local modules import
    named: list[Broker] = []
    fallback: Broker | None = None
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
        elif fallback is None and isinstance(getattr(module, "broker", None), Broker):
            fallback = module.broker
    if len({id(b) for b in named}) > 1:
        raise LoadError("the modules name different brokers; a worker runs one broker")
    if named:
        return named[0]
    return fallback if fallback is not None else get_broker()
