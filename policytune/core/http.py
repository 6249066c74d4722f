"""HTTP helpers shared by the scraper (:mod:`policytune.corpus.fetch`) and the model backends
(:mod:`policytune.lm.backends`).

- :func:`parse_retry_after`: a ``Retry-After`` header in either form (delta-seconds or
  HTTP-date) as seconds to wait.
- :func:`bounded_client` + :func:`bounded`: an ``httpx2`` client (the HTTP library under the
  official ``openai`` client) whose every socket connect, read and write on the calling thread
  is held to a *total* deadline and a byte cap for the request in progress::

      client = bounded_client(max_connections=8)
      with bounded(seconds=30, max_bytes=8 << 20) as budget:
          r = client.post(url, json=body)       # a reply trickled at 1 byte/s ends after 30 s
      budget.expired, budget.too_large         # why a request failed (httpx2 says only "timeout")

  ``httpx2``'s own timeouts apply to one socket operation each, so a server that sends one
  byte per second never trips them; here each operation gets at most what is left of the
  request's deadline, and once it is spent the next operation fails at once. The byte cap
  counts everything received (headers and body, before any decompression), so an endless or
  huge reply also ends early. Outside a ``bounded`` block the client behaves like a plain one.
  Requests through a proxy from the environment (``HTTPS_PROXY``) go through httpx2's proxy
  transport and have per-operation timeouts only.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Iterator

__all__ = ["parse_retry_after", "Budget", "bounded", "current_budget", "bounded_client"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for a server we start on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unparseable; 0 for a date in the past."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    try:
        return max(0.0, (when - now).total_seconds())
    except OverflowError:  # pragma: no cover - a date at the very edge of datetime's range
        return None


# --------------------------------------------------------------------------------------------
# A total deadline and a byte cap per request, enforced at the socket.


class Budget:
    """What one request on this thread may still spend: time until ``deadline`` (monotonic) and
    bytes up to ``max_bytes``. ``expired`` / ``too_large`` say which limit ended it."""

    __slots__ = ("seconds", "deadline", "max_bytes", "received", "expired", "too_large")

    def __init__(self, seconds: float, max_bytes: int | None = None):
        self.seconds = float(seconds)
        self.deadline = time.monotonic() + self.seconds
        self.max_bytes = max_bytes
        self.received = 0
        self.expired = False
        self.too_large = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def clamp(self, timeout: float | None, exc_name: str) -> float:
        """``timeout`` cut to what is left; raises httpcore2's ``exc_name`` once nothing is."""
        left = self.remaining()
        if left <= 0:
            self.expired = True
            import httpcore2
            raise getattr(httpcore2, exc_name)(f"total deadline of {self.seconds:g}s for this request passed")
        return left if timeout is None else min(timeout, left)

    def note_failure(self) -> None:
        """A socket operation failed: if the deadline has passed, that is why."""
        if self.remaining() <= 0:
            self.expired = True

    def count(self, n: int) -> None:
        self.received += n
        if self.max_bytes is not None and self.received > self.max_bytes:
            self.too_large = True
            import httpcore2
            raise httpcore2.ReadError(f"reply larger than {self.max_bytes} bytes")


_local = threading.local()


def current_budget() -> Budget | None:
    return getattr(_local, "budget", None)


@contextmanager
def bounded(seconds: float, max_bytes: int | None = None) -> Iterator[Budget]:
    """Hold every socket operation of a :func:`bounded_client` on this thread, inside the block,
    to ``seconds`` in total and ``max_bytes`` received in total."""
    prev = current_budget()
    budget = Budget(seconds, max_bytes)
    _local.budget = budget
    try:
        yield budget
    finally:
        _local.budget = prev


_CHUNK = 64 * 1024


class _Stream:
    """A network stream (httpcore2 ``NetworkStream`` protocol) held to the thread's budget."""

    def __init__(self, inner: Any):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        b = current_budget()
        if b is None:
            return self._inner.read(max_bytes, timeout)
        try:
            data = self._inner.read(max_bytes, b.clamp(timeout, "ReadTimeout"))
        except Exception:
            b.note_failure()
            raise
        b.count(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        b = current_budget()
        if b is None:
            return self._inner.write(buffer, timeout)
        view = memoryview(buffer)
        while view:  # in pieces, so a server that reads slowly cannot stretch one write
            try:
                self._inner.write(bytes(view[:_CHUNK]), b.clamp(timeout, "WriteTimeout"))
            except Exception:
                b.note_failure()
                raise
            view = view[_CHUNK:]

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> "_Stream":
        b = current_budget()
        t = timeout if b is None else b.clamp(timeout, "ConnectTimeout")
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, t))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    """httpcore2's sync network backend, its streams wrapped in :class:`_Stream`."""

    def __init__(self) -> None:
        import httpcore2
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> _Stream:
        b = current_budget()
        if b is None:
            return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))
        try:
            return _Stream(self._inner.connect_tcp(host, port, b.clamp(timeout, "ConnectTimeout"),
                                                   local_address, socket_options))
        except Exception:
            b.note_failure()
            raise

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> _Stream:  # pragma: no cover - not used
        b = current_budget()
        t = timeout if b is None else b.clamp(timeout, "ConnectTimeout")
        return _Stream(self._inner.connect_unix_socket(path, t, socket_options))

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore2 retries are off
        time.sleep(seconds)


def bounded_client(*, max_connections: int = 10, timeout: float = 60.0, verify: Any = True,
                   headers: dict | None = None):
    """An ``httpx2.Client`` whose direct connections honour :func:`bounded` (see the module
    docstring). ``timeout`` is httpx2's per-operation timeout, a backstop outside ``bounded``."""
    import httpcore2
    import httpx2

    transport = httpx2.HTTPTransport(verify=verify, limits=httpx2.Limits(max_connections=max_connections))
    transport._pool.close()
    # The same pool httpx2 builds, with the budgeted network backend underneath.
    transport._pool = httpcore2.ConnectionPool(
        ssl_context=httpx2.create_ssl_context(verify=verify), max_connections=max_connections,
        max_keepalive_connections=max_connections, keepalive_expiry=5.0, network_backend=_Backend())
    return httpx2.Client(transport=transport, timeout=httpx2.Timeout(timeout), follow_redirects=False,
                         headers=headers)
