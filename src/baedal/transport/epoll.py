"""A light TCP transport: many connections served by one ``select.epoll`` (Linux).

Theory of operation
-------------------
An asyncio (or uvloop) TCP transport costs about 1.2 KB per connection under uvloop (the
transport, its libuv handle and the loop's fd → transport map) and more under the
standard library's loop.  For a listener whose clients are mostly idle (MQTT devices
that send a PINGREQ every few minutes) that is most of what an idle client costs, more
than mosquitto's whole 0.75 KB per client.  Here a connection is a non-blocking socket's
descriptor (an ``int``) and an ``EpollTransport`` of six slots, nothing else:

* **One epoll per listener.**  ``EpollListener`` owns a ``select.epoll`` whose own
  descriptor is registered on the running loop with ``loop.add_reader`` (uvloop and
  asyncio both accept any pollable descriptor), so the loop wakes when any connection of
  the listener is ready; the callback takes at most ``_EVENTS_PER_CALL`` events from
  the epoll without blocking and serves them (level-triggered: whatever is left is
  reported again on the next loop turn, so one busy listener cannot starve the loop).
  The listening sockets are read by the loop itself (``add_reader``), so an accept
  never happens in the middle of a batch of events.
* **fd → transport** is a list indexed by descriptor (descriptors are small dense
  integers): 8 bytes per connection, no dict entry, no weak reference.  A closed
  transport's entry is set to None before its descriptor is closed, so a later event of
  the same batch for that descriptor is dropped.
* **Reading**: ``os.read(fd, 256 KiB)``, whose ``bytes`` go to ``data_received``; no
  per-connection read buffer.  (Measured against ``os.readv`` into one buffer shared by
  the listener and a ``bytes`` copy of what was read: that was ~3 µs more CPU per
  ping-pong round trip, a memoryview slice and a copy more; ``os.read`` allocates the
  256 KiB and shrinks it in place, and with uvloop's transports the round trip costs
  the same as here.)  EOF: ``eof_received()`` and, unless it asks to stay half open,
  close; an error: ``connection_lost(exc)``.
* **Writing**: ``os.write`` at once; only what the kernel did not take is kept, in a
  ``bytearray`` created then (None otherwise), and EPOLLOUT is asked for until it has
  gone.  The protocol's ``pause_writing`` / ``resume_writing`` follow asyncio's rule: pause
  when the buffer grows past the high-water mark, resume once it is at or below the
  low-water mark (limits as ``set_write_buffer_limits`` sets them: high 64 KiB and low a
  quarter of it by default).  EPIPE / ECONNRESET: ``connection_lost(exc)``.
* **Interest set**: EPOLLIN while reading is not paused and the transport is not
  closing, EPOLLOUT while output is pending; with neither, the descriptor leaves the
  epoll (an EPOLLHUP is reported whatever the mask, and would spin while paused).
* **Closing**: ``close()`` stops reading and closes once the pending output has gone;
  ``abort()`` closes now.  Closing unregisters the descriptor, forgets it, closes it and
  calls ``connection_lost`` once, on the loop (``call_soon``), never twice.
* **Listener shutdown**: ``close()`` stops accepting; ``wait_closed()`` aborts the
  connections still open (their protocols were told to close first by the server that
  owns them, so only output a client never read is dropped), lets their
  ``connection_lost`` run, then closes the epoll.

Where it is not used: TLS, WebSocket and Unix-socket listeners keep the loop's
transports (a TLS record layer is not worth rewriting for this), and so does any
platform without ``select.epoll``.  ``available()`` says which.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("baedal.transport")

__all__ = ["EpollListener", "EpollTransport", "available"]

_READ_SIZE = 32 * 1024  # bytes asked for per read: a publisher's big read is handled in
# turns with its subscribers' acks in between (a QoS 1 window moves sooner; measured)
_EVENTS_PER_CALL = 1024  # events served per loop callback (the rest come next turn)
_ACCEPTS_PER_CALL = 128  # connections accepted per loop callback
_BACKLOG = 100  # as asyncio's create_server
_DEFAULT_HIGH = 64 * 1024  # asyncio's default write-buffer high-water mark

# Transport state bits (one small int per transport: small ints are shared objects).
_READ_PAUSED = 1
_CLOSING = 2  # close() called: no more reads, close once the output has gone
_CLOSED = 4  # the descriptor is closed and connection_lost scheduled
_WRITE_PAUSED = 8  # the protocol was told pause_writing()
_IN = 16  # registered for EPOLLIN
_OUT = 32  # registered for EPOLLOUT
_EOF = 64  # the peer's EOF was seen (half-open: eof_received asked to stay)

_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
_EPOLLERR = getattr(select, "EPOLLERR", 8)
_EPOLLHUP = getattr(select, "EPOLLHUP", 16)
_READ_EVENTS = _EPOLLIN | _EPOLLERR | _EPOLLHUP
_WRITE_EVENTS = _EPOLLOUT | _EPOLLERR | _EPOLLHUP


_read = os.read
_write = os.write


def available() -> bool:
    """True where the light transport can serve a TCP listener (Linux: ``select.epoll``)."""
    return hasattr(select, "epoll")


def _borrowed(fd: int) -> socket.socket:
    """A socket object over ``fd`` for one query; the caller must ``detach()`` it (so the
    descriptor stays the transport's)."""
    return socket.socket(fileno=fd)


class EpollTransport:
    """One connection of an ``EpollListener``: what a protocol uses of an asyncio
    transport (see the module docstring for the rules it follows).  Not a subclass of
    ``asyncio.Transport``: its ``_extra`` slot would be 8 unused bytes per connection."""

    __slots__ = ("_fd", "_protocol", "_listener", "_pending", "_state", "_limits")

    def __init__(self, fd: int, listener: EpollListener, protocol: asyncio.Protocol) -> None:
        self._fd = fd
        self._protocol = protocol
        self._listener = listener
        self._pending: bytearray | None = None  # output the kernel has not taken yet
        self._state = 0
        self._limits: tuple[int, int] | None = None  # (high, low); None: the listener's

    # --- what protocols call ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._state & _CLOSED:
            return default
        if name in ("peername", "sockname"):
            sock = _borrowed(self._fd)
            try:
                return sock.getpeername() if name == "peername" else sock.getsockname()
            except OSError:
                return default
            finally:
                sock.detach()
        if name == "socket":
            # A duplicate descriptor of the same socket: options set on it apply to the
            # connection, and the caller's object closing it cannot close ours.
            sock = _borrowed(self._fd)
            try:
                return socket.socket(sock.family, sock.type, sock.proto, os.dup(self._fd))
            except OSError:
                return default
            finally:
                sock.detach()
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def is_closing(self) -> bool:
        return bool(self._state & (_CLOSING | _CLOSED))

    def is_reading(self) -> bool:
        return not self._state & (_READ_PAUSED | _CLOSING | _CLOSED)

    def pause_reading(self) -> None:
        if self._state & (_READ_PAUSED | _CLOSING | _CLOSED):
            return
        self._state |= _READ_PAUSED
        self._listener._interest(self)

    def resume_reading(self) -> None:
        if not self._state & _READ_PAUSED or self._state & (_CLOSING | _CLOSED):
            return
        self._state &= ~_READ_PAUSED
        self._listener._interest(self)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        limits = (high, low)
        # The listener's limits are shared: a transport stores only different ones.
        self._limits = None if limits == self._listener.write_limits else limits
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        high, low = self._limits or self._listener.write_limits
        return low, high

    def get_write_buffer_size(self) -> int:
        pending = self._pending
        return 0 if pending is None else len(pending)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state & (_CLOSING | _CLOSED) or not data:
            return  # (asyncio also ignores writes after close)
        pending = self._pending
        if pending is not None:
            pending += data
            self._maybe_pause_protocol()
            return
        try:
            sent = _write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent == len(data):
            return
        self._pending = bytearray(memoryview(data)[sent:])
        self._listener._interest(self)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the light transport does not half-close")

    def close(self) -> None:
        state = self._state
        if state & (_CLOSING | _CLOSED):
            return
        self._state = state | _CLOSING
        if self._pending is None:
            self._finish(None)
        else:
            self._listener._interest(self)  # stop reading; keep EPOLLOUT until drained

    def abort(self) -> None:
        self._finish(None)

    # --- what the listener calls -----------------------------------------------------

    def _read_ready(self) -> None:
        try:
            data = _read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            self._protocol.data_received(data)
            return
        listener = self._listener
        # EOF from the peer.
        self._state |= _EOF
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:  # a protocol bug: close rather than spin on EOF
            log.exception("eof_received failed")
            self._fatal(exc)
            return
        if keep_open and not self._state & (_CLOSING | _CLOSED):
            # Half open: the peer sends no more, we may still write; stop reading EOF.
            self._state |= _READ_PAUSED
            listener._interest(self)
        else:
            self.close()

    def _write_ready(self) -> None:
        pending = self._pending
        if pending is None:
            self._listener._interest(self)
            return
        try:
            sent = _write(self._fd, pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del pending[:sent]  # (a bytearray drops its head without moving the rest)
        if pending:
            self._maybe_resume_protocol()
            return
        self._pending = None
        if self._state & _CLOSING:
            self._finish(None)
            return
        self._listener._interest(self)
        self._maybe_resume_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._state & _WRITE_PAUSED:
            return
        high = (self._limits or self._listener.write_limits)[0]
        if self.get_write_buffer_size() <= high:
            return
        self._state |= _WRITE_PAUSED
        try:
            self._protocol.pause_writing()
        except Exception:
            log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if not self._state & _WRITE_PAUSED or self._state & _CLOSED:
            return
        low = (self._limits or self._listener.write_limits)[1]
        if self.get_write_buffer_size() > low:
            return
        self._state &= ~_WRITE_PAUSED
        try:
            self._protocol.resume_writing()
        except Exception:
            log.exception("protocol.resume_writing() failed")

    def _fatal(self, exc: BaseException) -> None:
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("light transport: fatal error on fd %d: %r", self._fd, exc)
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        """Close the descriptor and tell the protocol, once."""
        state = self._state
        if state & _CLOSED:
            return
        self._state = (state | _CLOSED | _CLOSING) & ~(_IN | _OUT)
        self._pending = None
        self._listener._forget(self, state & (_IN | _OUT))
        self._listener.loop.call_soon(self._protocol.connection_lost, exc)

    def __repr__(self) -> str:
        return f"<EpollTransport fd={self._fd} state={self._state:#x}>"


class EpollListener:
    """A TCP listener whose connections are ``EpollTransport``s (module docstring).

    Exposes what the servers use of ``asyncio.Server``: ``sockets``, ``close()``,
    ``wait_closed()``; plus ``transports`` (how many are open) for tests and operators.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol],
                 sockets: list[socket.socket]) -> None:
        self.loop = loop
        self.protocol_factory = protocol_factory
        self.sockets = sockets
        self.write_limits = (_DEFAULT_HIGH, _DEFAULT_HIGH // 4)
        self.transports = 0
        self._epoll = select.epoll()
        self._table: list[EpollTransport | None] = []  # indexed by descriptor
        self._serving = True
        self._closed = False
        loop.add_reader(self._epoll.fileno(), self._on_events)
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._on_accept, sock)

    @classmethod
    async def create(cls, protocol_factory: Callable[[], asyncio.Protocol], host: str | None, port: int,
                     *, backlog: int = _BACKLOG) -> EpollListener:
        """Bind ``host:port`` as ``loop.create_server`` does (every address the host
        resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only) and serve it."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        seen: set[Any] = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(sockets) > 1:  # one ephemeral port for every address
                    address = (address[0], sockets[0].getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return cls(loop, protocol_factory, sockets)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    # --- accepting ---------------------------------------------------------------------

    def _on_accept(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_CALL):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a second (as asyncio does)
                    # rather than spin on a listening socket that stays readable.
                    log.error("light transport: accept failed (%s); pausing accepts for 1 s", exc)
                    self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(1.0, self._resume_accepting, sock)
                    return
                raise
            try:
                conn.setblocking(False)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio
            except OSError:
                conn.close()  # reset before we saw it
                continue
            self._adopt(conn.detach())

    def _resume_accepting(self, sock: socket.socket) -> None:
        if self._serving:
            self.loop.add_reader(sock.fileno(), self._on_accept, sock)

    def _adopt(self, fd: int) -> None:
        try:
            protocol = self.protocol_factory()
        except Exception:
            log.exception("light transport: protocol factory failed")
            os.close(fd)
            return
        transport = EpollTransport(fd, self, protocol)
        table = self._table
        if fd >= len(table):
            # Grow by a quarter (amortised O(1), at most ~10 bytes per descriptor).
            table.extend([None] * max(fd + 1 - len(table), len(table) // 4 + 64))
        table[fd] = transport
        self.transports += 1
        self._epoll.register(fd, _EPOLLIN)
        transport._state = _IN
        try:
            protocol.connection_made(transport)
        except Exception:
            log.exception("light transport: connection_made failed")
            transport.abort()

    # --- events ------------------------------------------------------------------------

    def _on_events(self) -> None:
        try:
            events = self._epoll.poll(0, _EVENTS_PER_CALL)
        except InterruptedError:
            return
        table = self._table
        for fd, mask in events:
            transport = table[fd]
            if transport is None:
                continue  # closed earlier in this batch
            # Output first: a transport waiting to close finishes once drained.
            if mask & _WRITE_EVENTS and transport._pending is not None:
                transport._write_ready()
            if mask & _READ_EVENTS and transport._state & _IN:
                try:
                    transport._read_ready()
                except Exception as exc:
                    # A protocol bug must not stop the listener's other connections.
                    log.exception("light transport: data_received failed")
                    transport._fatal(exc)

    def _interest(self, transport: EpollTransport) -> None:
        """Bring the descriptor's epoll registration in line with the transport's state."""
        state = transport._state
        if state & _CLOSED:
            return
        wanted = 0
        if not state & (_READ_PAUSED | _CLOSING):
            wanted |= _IN
        if transport._pending is not None:
            wanted |= _OUT
        registered = state & (_IN | _OUT)
        if wanted == registered:
            return
        mask = (_EPOLLIN if wanted & _IN else 0) | (_EPOLLOUT if wanted & _OUT else 0)
        fd = transport._fd
        if not registered:
            self._epoll.register(fd, mask)
        elif not wanted:
            self._epoll.unregister(fd)
        else:
            self._epoll.modify(fd, mask)
        transport._state = (state & ~(_IN | _OUT)) | wanted

    def _forget(self, transport: EpollTransport, registered: int) -> None:
        fd = transport._fd
        if registered:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass
        if fd < len(self._table) and self._table[fd] is transport:
            self._table[fd] = None
        self.transports -= 1
        try:
            os.close(fd)
        except OSError:
            pass

    # --- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting (open connections are left to their protocols)."""
        if not self._serving:
            return
        self._serving = False
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
            sock.close()

    def is_serving(self) -> bool:
        return self._serving

    async def wait_closed(self) -> None:
        """After ``close()``: abort what is still open, let ``connection_lost`` run, and
        release the epoll."""
        self.close()
        for transport in list(self._table):
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)  # the connection_lost calls scheduled by abort()
        if not self._closed:
            self._closed = True
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
