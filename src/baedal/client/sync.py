"""The synchronous client: the asyncio sockets driven from ordinary threads.

Like ZeroMQ's context, a ``Context`` owns an I/O thread running an event loop; each
``Socket`` runs its ``AsyncSocket`` there and its methods block the calling thread on
the result (``run_coroutine_threadsafe``).  For ``inproc://NAME`` on a broker already
running in its own thread (``with Broker(...)``), the socket runs on *the broker's* loop
instead, so a message crosses one thread boundary, not two (about 4x faster on the
benchmark machine, where every extra thread hand-off waits for the GIL).  The price: such
a socket lives and dies with that broker; once the broker is stopped its calls raise
``ClientError`` (make a new socket for a new broker), whereas sockets on the context's
loop reconnect by themselves.

A socket is meant to be used from one thread at a time (as in ZeroMQ); different sockets
may be used from different threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from .links import ClientError, Delivery, parse_endpoint
from .sockets import AsyncSocket

T = TypeVar("T")


class Context:
    """Makes synchronous sockets; ``with Context() as ctx:`` closes them at the end."""

    def __init__(self, timeout: float | None = 30.0) -> None:
        self.timeout = timeout
        self.sockets: list[Socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def socket(self, kind: str, name: str, **options: Any) -> Socket:
        options.setdefault("timeout", self.timeout)
        sock = Socket(self, AsyncSocket(kind, name, **options))
        with self._lock:
            self.sockets.append(sock)
        return sock

    def io_loop(self) -> asyncio.AbstractEventLoop:
        """The context's I/O thread loop, started on first use."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="baedal-client-io", daemon=True)
                self._thread.start()
                started.wait()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        with self._lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.close()
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Socket:
    """A blocking pattern socket (see ``sockets.py`` for the patterns)."""

    def __init__(self, context: Context, inner: AsyncSocket) -> None:
        self.context = context
        self.inner = inner
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("socket is not connected")
        if loop.is_closed():
            coro.close()
            raise ClientError("the in-process broker this socket ran on has stopped")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                # In slices, so a loop that stops under us (its broker stopped) is
                # noticed instead of waiting forever.
                wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                try:
                    return future.result(wait)
                except concurrent.futures.TimeoutError:
                    if future.done():
                        raise  # the operation's own timeout (e.g. recv(timeout=...))
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError() from None
                    if not loop.is_running():
                        raise ClientError("the event loop this socket ran on has stopped") from None
        except BaseException:
            future.cancel()
            raise

    def connect(self, url: str) -> Socket:
        loop = None
        endpoint = parse_endpoint(url)
        if endpoint.scheme == "inproc":
            from ..transport import inproc

            broker = inproc.lookup(endpoint.address)
            broker_loop = getattr(broker, "_loop", None)
            if broker_loop is not None and broker_loop.is_running() and getattr(broker, "_thread", None) is not None:
                loop = broker_loop
        self._loop = loop or self.context.io_loop()
        self._run(self.inner.connect(url))
        return self

    bind = connect

    def send(self, data: bytes | list[bytes], *, topic: str = "") -> None:
        self._run(self.inner.send(data, topic=topic))

    def send_multipart(self, parts: list[bytes]) -> None:
        self._run(self.inner.send_multipart(parts))

    def recv(self, timeout: float | None = None) -> bytes:
        return self._run(self.inner.recv(timeout))

    def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        return self._run(self.inner.recv_multipart(timeout))

    def recv_delivery(self, timeout: float | None = None) -> Delivery:
        return self._run(self.inner.recv_delivery(timeout))

    def request(self, data: bytes | list[bytes], timeout: float | None = None) -> bytes:
        return self._run(self.inner.request(data, timeout))

    def subscribe(self, prefix: str | bytes = "") -> None:
        if self._loop is None:  # before connect: recorded, bound at connect
            self.inner._prefixes.append(prefix.decode() if isinstance(prefix, bytes) else prefix)
            return
        self._run(self.inner.subscribe(prefix))

    def unsubscribe(self, prefix: str | bytes = "") -> None:
        self._run(self.inner.unsubscribe(prefix))

    def ack(self) -> None:
        self._call(self.inner.ack)

    def reject(self, requeue: bool = True) -> None:
        self._call(lambda: self.inner.reject(requeue))

    def _call(self, fn: Any) -> None:
        async def run() -> None:
            fn()

        self._run(run())

    @property
    def queue_name(self) -> str | None:
        return self.inner.queue_name

    def close(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        try:
            self._run(self.inner.close(), 15)
        except (RuntimeError, ClientError):
            pass  # the loop stopped under us (broker stopped first)
        self._loop = None

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self._loop is not None and not self._loop.is_closed():
            try:
                self.reject(requeue=True)  # the work failed: give the message back
            except Exception:
                pass
        self.close()
