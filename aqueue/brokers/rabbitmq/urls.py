"""Broker URL lists: one URL, a sequence of URLs, or URLs separated by commas."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..._url import describe_url

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
URL_ENVIRONMENT_VARIABLE = "AQUEUE_BROKER_URL"


def broker_urls(url: str | Sequence[str] | None) -> list[str]:
    """The URLs of ``url`` (default: ``AQUEUE_BROKER_URL``, else the local node), validated.

    Raises:
        ValueError: no URL, or a URL that is not ``amqp://`` or ``amqps://`` (the
            message never shows a password).
    """
    if url is None:
        url = os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    if isinstance(url, str):
        urls = [part.strip() for part in url.split(",")]
    else:
        urls = [str(part).strip() for part in url]
    urls = [u for u in urls if u]
    if not urls:
        raise ValueError("no broker URL given")
    for u in urls:
        describe_url(u)  # validates, with an error that never shows the password
    return urls


def describe_urls(urls: Sequence[str]) -> str:
    """``host:port`` of each URL, comma-separated."""
    return ", ".join(describe_url(u) for u in urls)
