"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

aqueue's docstrings use roles such as :func:`aqueue.get_broker` and
:class:`~aqueue.ActorDefinitionError`, which Markdown would show verbatim. They are
rendered as `aqueue.get_broker` and `ActorDefinitionError` (a leading ``~`` keeps
only the last component, as in Sphinx).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|exc|data|obj|const):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code_span, obj.docstring.value)
