"""Queue counts from RabbitMQ's management HTTP API: what AMQP cannot tell.

A passive declare over AMQP tells a queue's ready messages and consumers, not how many
were delivered and are not acknowledged yet (prefetched or running in workers). The
management plugin's HTTP API does (``GET /api/queues/<vhost>/<queue>``). It is read here
with the standard library in a worker thread, every request bounded by a timeout; the
API's figures are RabbitMQ's statistics, refreshed every 5 s by default.

Where the API is: ``AQUEUE_MANAGEMENT_URL`` or an explicit URL (its path is where
``/api/`` lives, e.g. behind a proxy), else port 15672 (15671 for ``amqps``) on the host
of each broker URL, tried in turn. Credentials and vhost are those of the broker URL
unless the management URL has credentials of its own. Redirects are not followed, so
the credentials never go to another host.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from yarl import URL

__all__ = [
    "MANAGEMENT_URL_ENVIRONMENT_VARIABLE",
    "ManagementApi",
    "ManagementUnavailable",
    "QueueCounts",
]

MANAGEMENT_URL_ENVIRONMENT_VARIABLE = "AQUEUE_MANAGEMENT_URL"
_DEFAULT_PORTS = {"amqp": ("http", 15672), "amqps": ("https", 15671)}


class ManagementUnavailable(Exception):
    """The management API cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class QueueCounts:
    """A queue as the management API counts it."""

    queue: str
    ready: int | None
    unacknowledged: int | None
    consumers: int | None


@dataclass(frozen=True)
class _Endpoint:
    base: str  # scheme://host:port/path/, without credentials
    authorization: str

    @classmethod
    def of(cls, url: URL, username: str, password: str) -> _Endpoint:
        base = str(url.with_user(None).with_query(None).with_fragment(None))
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        return cls(base if base.endswith("/") else base + "/", f"Basic {token}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx becomes an HTTPError: credentials stay with the host asked


_OPENER = urllib.request.build_opener(_NoRedirect)


class ManagementApi:
    """The management HTTP API of the broker's cluster (any node answers for all).

    Args:
        endpoints: Where to ask, in order; the first that answers is kept.
        vhost: The virtual host of the queues.
        timeout: Seconds each request may take.
    """

    def __init__(self, endpoints: Sequence[_Endpoint], vhost: str, *, timeout: float) -> None:
        if not endpoints:
            raise ValueError("no management API endpoint")
        self._endpoints = list(endpoints)
        self.vhost = vhost
        self.timeout = timeout
        self._failure: str | None = None

    @classmethod
    def for_broker(
        cls, broker_urls: Sequence[str], url: str | None = None, *, timeout: float = 5.0
    ) -> ManagementApi:
        """The API of the cluster of ``broker_urls``: at ``url`` (default:
        ``AQUEUE_MANAGEMENT_URL``), else on the management port of each broker host."""
        if not broker_urls:
            raise ValueError("no broker URL")
        first = URL(broker_urls[0])
        vhost = first.path[1:] or "/"
        url = url or os.environ.get(MANAGEMENT_URL_ENVIRONMENT_VARIABLE) or None
        if url is not None:
            given = URL(url)
            if given.scheme not in ("http", "https") or not given.host:
                shown = given.with_password("***") if given.password else given
                raise ValueError(f"management URL must be http(s)://host:port/, not '{shown}'")
            if given.user is not None:
                username, password = given.user, given.password or ""
            else:
                username, password = first.user or "guest", first.password or "guest"
            return cls([_Endpoint.of(given, username, password)], vhost, timeout=timeout)
        endpoints = []
        for broker_url in dict.fromkeys(broker_urls):
            parsed = URL(broker_url)
            scheme, port = _DEFAULT_PORTS.get(parsed.scheme, ("http", 15672))
            management = URL.build(scheme=scheme, host=parsed.host or "localhost", port=port)
            endpoints.append(
                _Endpoint.of(management, parsed.user or "guest", parsed.password or "guest")
            )
        return cls(endpoints, vhost, timeout=timeout)

    def __repr__(self) -> str:
        return f"ManagementApi({self.describe()!r}, vhost={self.vhost!r})"

    def describe(self) -> str:
        """Where the API is asked (no credentials)."""
        return ", ".join(endpoint.base for endpoint in self._endpoints)

    async def queue_counts(self, queue_name: str) -> QueueCounts | None:
        """Counts of ``queue_name``, or None if it does not exist.

        Raises:
            ManagementUnavailable: no endpoint answered (plugin not enabled, wrong port,
                refused credentials, timeout); later calls raise it at once.
        """
        path = (
            f"api/queues/{urllib.parse.quote(self.vhost, safe='')}/"
            f"{urllib.parse.quote(queue_name, safe='')}"
        )
        found = await self.get_json(path)
        if found is None:
            return None
        if not isinstance(found, dict):
            raise ManagementUnavailable(f"{self.describe()}: answered with other than a queue")
        return _counts(queue_name, found)

    async def get_json(self, path: str) -> Any:
        """``GET`` ``path`` (below where ``/api/`` lives: ``"api/consumers/%2F"``), as
        parsed JSON; None if the API answered 404. The first endpoint that answers is
        asked first from then on.

        Raises:
            ManagementUnavailable: no endpoint answered (plugin not enabled, wrong port,
                refused credentials, timeout, not JSON); later calls raise it at once.
        """
        if self._failure is not None:
            raise ManagementUnavailable(self._failure)
        failures = []
        for endpoint in list(self._endpoints):
            try:
                with anyio.fail_after(self.timeout + 1.0):
                    found = await anyio.to_thread.run_sync(
                        self._get, endpoint, path, abandon_on_cancel=True
                    )
            except TimeoutError:
                failures.append(f"{endpoint.base}: no answer within {self.timeout:g} s")
                continue
            except ManagementUnavailable as exc:
                failures.append(str(exc))
                continue
            # Keep asking the one that answered first.
            self._endpoints.remove(endpoint)
            self._endpoints.insert(0, endpoint)
            return found
        self._failure = "; ".join(failures)
        raise ManagementUnavailable(self._failure)

    def _get(self, endpoint: _Endpoint, path: str) -> Any:
        request = urllib.request.Request(
            endpoint.base + path,
            headers={"Authorization": endpoint.authorization, "Accept": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response (and its socket)
            if exc.code == 404:
                return None
            if exc.code in (401, 403):
                refused = "refused the credentials"
            else:
                refused = f"answered HTTP {exc.code} {exc.reason}"
            raise ManagementUnavailable(f"{endpoint.base}: {refused}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            elif isinstance(reason, OSError) and reason.strerror:
                reason = reason.strerror.lower()
            raise ManagementUnavailable(f"{endpoint.base}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ManagementUnavailable(f"{endpoint.base}: answered with other than JSON") from None


def _counts(queue_name: str, found: dict[str, Any]) -> QueueCounts:
    def count(key: str) -> int | None:
        value = found.get(key)  # missing until the queue's first statistics come in
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return QueueCounts(
        queue=queue_name,
        ready=count("messages_ready"),
        unacknowledged=count("messages_unacknowledged"),
        consumers=count("consumers"),
    )
