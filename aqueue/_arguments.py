"""Checking and decoding an actor's arguments against its signature and type hints.

Built once per actor. ``check`` runs at send time on Python objects; ``decode``
runs on the worker on JSON values and returns them as the annotated types.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from .errors import ActorDefinitionError, ValidationError

_EMPTY = inspect.Parameter.empty

#: Stands for the argument a pipeline step receives from the step before (not known yet).
_PIPED = object()


class _Param(typing.NamedTuple):
    name: str
    type: Any  # None when the argument accepts anything
    required: bool


class ArgumentSpec:
    """The parameters of one actor function, ready for fast validation."""

    __slots__ = (
        "_keyword",
        "_owner",
        "_positional",
        "_positional_names",
        "_required_keyword_only",
        "_typed",
        "_var_keyword",
        "_var_positional",
    )

    def __init__(self, fn: Callable[..., Any], owner: str) -> None:
        self._owner = owner
        try:
            signature = inspect.signature(fn)
            hints = typing.get_type_hints(fn)
        except (NameError, TypeError) as exc:
            raise ActorDefinitionError(
                f"actor {owner!r}: cannot read the type hints of its function: {exc}"
            ) from None

        self._positional: list[_Param] = []
        self._keyword: dict[str, _Param] = {}
        self._var_positional: Any = _EMPTY
        self._var_keyword: Any = _EMPTY
        self._required_keyword_only: list[str] = []
        for param in signature.parameters.values():
            annotation = _accepted_type(hints.get(param.name, Any))
            p = _Param(param.name, annotation, param.default is _EMPTY)
            if param.kind is param.POSITIONAL_ONLY:
                self._positional.append(p)
            elif param.kind is param.POSITIONAL_OR_KEYWORD:
                self._positional.append(p)
                self._keyword[param.name] = p
            elif param.kind is param.KEYWORD_ONLY:
                self._keyword[param.name] = p
                if p.required:
                    self._required_keyword_only.append(param.name)
            elif param.kind is param.VAR_POSITIONAL:
                self._var_positional = annotation
            else:
                self._var_keyword = annotation
        self._positional_names = {p.name for p in self._positional}
        self._typed = any(p.type is not None for p in self._positional) or any(
            p.type is not None for p in self._keyword.values()
        )
        self._typed = self._typed or self._var_positional not in (_EMPTY, None)
        self._typed = self._typed or self._var_keyword not in (_EMPTY, None)
        # Fail at decoration time, not at the first send, on hints msgspec cannot handle.
        for t in [p.type for p in self._positional] + [p.type for p in self._keyword.values()]:
            if t is not None:
                try:
                    msgspec.json.schema(t)
                except TypeError:
                    raise ActorDefinitionError(
                        f"actor {owner!r}: type hint {t!r} cannot travel as JSON; use JSON types,"
                        " datetime, UUID, Decimal, enums, msgspec.Struct or dataclasses"
                    ) from None

    def check(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, piped: bool = False) -> None:
        """Raise :class:`ValidationError` unless the arguments fit the signature and hints.

        ``piped``: one more positional argument, of any value, follows ``args`` (the result
        a pipeline step receives from the step before).
        """
        self._bind((*args, _PIPED) if piped else args, kwargs)

    def decode(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Convert JSON-decoded arguments to the annotated types."""
        return self._bind(args, kwargs)

    def _bind(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        n_args = len(args)
        positional = self._positional
        if n_args > len(positional) and self._var_positional is _EMPTY:
            raise ValidationError(
                f"{self._owner}() takes {len(positional)} positional argument"
                f"{'' if len(positional) == 1 else 's'} but {n_args} were given"
            )
        for name in kwargs:
            if name not in self._keyword:
                if self._var_keyword is _EMPTY or name in self._positional_names:
                    if name in self._positional_names and self._var_keyword is _EMPTY:
                        raise ValidationError(
                            f"{self._owner}() got a positional-only argument {name!r} by keyword"
                        )
                    raise ValidationError(f"{self._owner}() got an unexpected argument {name!r}")
            elif name in self._positional_names and _index(positional, name) < n_args:
                raise ValidationError(f"{self._owner}() got multiple values for argument {name!r}")
        for param in positional[n_args:]:
            if param.required and param.name not in kwargs:
                raise ValidationError(f"{self._owner}() is missing the argument {param.name!r}")
        for name in self._required_keyword_only:
            if name not in kwargs:
                raise ValidationError(f"{self._owner}() is missing the argument {name!r}")

        if not self._typed:
            return tuple(args), dict(kwargs)

        out_args = []
        for i, value in enumerate(args):
            if i < len(positional):
                name, typ = positional[i].name, positional[i].type
            else:
                name, typ = "*args", self._var_positional
            out_args.append(self._convert(name, value, typ))
        out_kwargs = {}
        for name, value in kwargs.items():
            keyword = self._keyword.get(name)
            typ = keyword.type if keyword is not None else self._var_keyword
            out_kwargs[name] = self._convert(name, value, typ)
        return tuple(out_args), out_kwargs

    def _convert(self, name: str, value: Any, typ: Any) -> Any:
        if typ is None or typ is _EMPTY or value is _PIPED:
            return value
        try:
            return msgspec.convert(value, typ)
        except (msgspec.ValidationError, RecursionError) as exc:
            raise ValidationError(f"{self._owner}(): argument {name!r}: {exc}") from None


def _index(params: list[_Param], name: str) -> int:
    for i, p in enumerate(params):
        if p.name == name:
            return i
    return -1


def _accepted_type(hint: Any) -> Any:
    """The type to convert to, or None where any value is accepted."""
    if hint is Any or hint is object:
        return None
    return hint
