"""``amqps://``: certificate verification on by default, client certificates, no leaked secrets.

The test makes a throwaway certificate authority with the ``openssl`` command, and puts a
TLS-terminating proxy in front of the RabbitMQ on 127.0.0.1:5672: TLS from aqueue to the
proxy, plain AMQP from the proxy on. The TLS options are query parameters of the URL, read by
aiormq: ``cafile``, ``capath``, ``cadata`` (base64 DER), ``certfile``, ``keyfile`` and
``no_verify_ssl=1`` (which turns verification off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import aqueue

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
PASSWORD = "guest"  # RabbitMQ's; the tests that look for leaks use SECRET instead
SECRET = "s3cret-Pa55word"

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[elsewhere]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:elsewhere.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass
class Pki:
    """A throwaway CA and what it signed, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    elsewhere_cert: Path  # a server certificate for another name
    elsewhere_key: Path
    client_cert: Path
    client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def _issue(directory: Path, name: str, section: str) -> tuple[Path, Path]:
    """A key and a certificate signed by the CA in ``directory``, with ``section``'s extensions."""
    key, csr, cert = (directory / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
    _openssl(directory, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", key.name)  # fmt: skip
    _openssl(directory, "req", "-new", "-key", key.name, "-subj", f"/CN={name}",
             "-config", "openssl.cnf", "-out", csr.name)  # fmt: skip
    _openssl(directory, "x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "openssl.cnf",
             "-extensions", section, "-out", cert.name)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    (directory / "openssl.cnf").write_text(OPENSSL_CONFIG)
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-sha256",
             "-subj", "/CN=aqueue test CA", "-config", "openssl.cnf",
             "-extensions", "ca")  # fmt: skip
    server_cert, server_key = _issue(directory, "localhost", "server")
    elsewhere_cert, elsewhere_key = _issue(directory, "elsewhere", "elsewhere")
    client_cert, client_key = _issue(directory, "client", "client")
    return Pki(
        directory / "ca.pem",
        server_cert,
        server_key,
        elsewhere_cert,
        elsewhere_key,
        client_cert,
        client_key,
    )


class TlsProxy:
    """TLS on 127.0.0.1:<port>, piped to RabbitMQ's plain AMQP port."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.port = 0
        self.accepted = 0  # TLS handshakes that succeeded
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(RABBITMQ_HOST, RABBITMQ_PORT)
        except OSError:
            writer.close()
            return
        pipes = [
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await w.wait_closed()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def server_context(
    pki: Pki, *, require_client_cert: bool = False, elsewhere: bool = False
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if elsewhere:
        context.load_cert_chain(pki.elsewhere_cert, pki.elsewhere_key)
    else:
        context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    return context


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[ssl.SSLContext], Any]]:
    proxies: list[TlsProxy] = []

    async def make(context: ssl.SSLContext) -> TlsProxy:
        proxy = TlsProxy(context)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            await proxy.close()


def amqps_url(port: int, password: str = PASSWORD, **query: str | Path) -> str:
    params = urllib.parse.urlencode({k: str(v) for k, v in query.items()})
    return f"amqps://guest:{password}@localhost:{port}/" + (f"?{params}" if params else "")


# -- the tests --------------------------------------------------------------------------------


async def test_amqps_with_the_ca_file_sends_and_consumes_over_tls(
    pki: Pki, make_proxy: Any, queue_name: str
) -> None:
    proxy = await make_proxy(server_context(pki))
    broker = aqueue.RabbitmqBroker(amqps_url(proxy.port, cafile=pki.ca))
    done: list[str] = []

    @broker.actor(queue_name=queue_name)
    async def greet(name: str) -> None:
        done.append(name)

    try:
        await greet.send("over tls")
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=20)
        assert done == ["over tls"]
        assert proxy.accepted == 2  # one connection sends, one consumes, both through TLS
        for connection in (broker.connection, broker.consuming_connection):
            assert connection is not None
            assert connection.url.scheme == "amqps"
            assert connection.url.port == proxy.port
    finally:
        await broker.close()


async def test_certificate_verification_is_on_by_default(
    pki: Pki, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(server_context(pki))
    url = amqps_url(proxy.port, password=SECRET)  # no cafile: the system's CAs only
    broker = aqueue.RabbitmqBroker(url, connect_attempts=2, connect_retry_delay=0.05)
    assert SECRET not in repr(broker) and SECRET not in str(broker)
    assert repr(broker) == f"RabbitmqBroker('amqps://guest:***@localhost:{proxy.port}/')"
    with pytest.raises(aqueue.BrokerConnectionError) as caught:
        await broker.connect()
    message = str(caught.value)
    assert f"cannot connect to RabbitMQ at localhost:{proxy.port} (2 attempts" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "unable to get local issuer certificate" in message
    assert SECRET not in message and SECRET not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is not None
    assert SECRET not in caplog.text
    assert broker.connection is None


async def test_the_host_name_is_checked(pki: Pki, make_proxy: Any) -> None:
    proxy = await make_proxy(server_context(pki, elsewhere=True))  # for elsewhere.example
    broker = aqueue.RabbitmqBroker(amqps_url(proxy.port, cafile=pki.ca), connect_attempts=1)
    with pytest.raises(aqueue.BrokerConnectionError, match="Hostname mismatch"):
        await broker.connect()


async def test_no_verify_ssl_turns_verification_off(pki: Pki, make_proxy: Any) -> None:
    proxy = await make_proxy(server_context(pki, elsewhere=True))
    broker = aqueue.RabbitmqBroker(amqps_url(proxy.port, no_verify_ssl="1"))
    try:
        await broker.connect()
        assert await broker.queue_info("aqueue.no-such-queue") is None
    finally:
        await broker.close()


async def test_client_certificate_required(pki: Pki, make_proxy: Any, queue_name: str) -> None:
    proxy = await make_proxy(server_context(pki, require_client_cert=True))
    with_cert = aqueue.RabbitmqBroker(
        amqps_url(proxy.port, cafile=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key)
    )
    without = aqueue.RabbitmqBroker(
        amqps_url(proxy.port, password=SECRET, cafile=pki.ca),
        connect_attempts=1,
    )
    done: list[int] = []

    @with_cert.actor(queue_name=queue_name)
    async def count(n: int) -> None:
        done.append(n)

    try:
        await count.send(1)
        async with aqueue.Worker(with_cert, queues=[queue_name]):
            await with_cert.join(queue_name, timeout=20)
        assert done == [1]
        with pytest.raises(aqueue.BrokerConnectionError) as caught:
            await without.connect()
        message = str(caught.value)
        assert f"cannot connect to RabbitMQ at localhost:{proxy.port}" in message
        assert SECRET not in message
    finally:
        await with_cert.close()
        await without.close()


async def test_refused_credentials_over_tls_do_not_show_the_password(
    pki: Pki, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(server_context(pki))
    broker = aqueue.RabbitmqBroker(amqps_url(proxy.port, password=SECRET, cafile=pki.ca))
    with pytest.raises(aqueue.BrokerConnectionError, match="refused the credentials") as caught:
        await broker.connect()
    assert f"localhost:{proxy.port}" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert SECRET not in caplog.text
    assert proxy.accepted == 1  # refused credentials are not retried


def test_urls_with_tls_options_are_redacted_but_keep_their_options(pki: Pki) -> None:
    url = amqps_url(5671, password=SECRET, cafile=pki.ca, certfile=pki.client_cert)
    broker = aqueue.RabbitmqBroker(url)
    assert SECRET not in repr(broker)
    assert "cafile=" in repr(broker) and "guest:***@localhost:5671" in repr(broker)
    with pytest.raises(ValueError, match="invalid broker URL") as caught:
        aqueue.RabbitmqBroker(f"amqps://guest:{SECRET}@/vhost")
    assert SECRET not in str(caught.value)
