"""Unix domain socket listeners for any protocol (ZeroMQ's ``ipc://``).

``listen_unix(factory, address, mode=...)`` serves ``factory()`` protocols on a Unix
socket, exactly as ``loop.create_server`` does on TCP: the AMQP listener passes its
connection class, and STOMP or MQTT can pass theirs.  Authentication is the protocol's
own, unchanged; the socket adds a first gate in front of it: the file's permissions.

Addresses
---------
* ``/run/baedal/amqp.sock``: a file.  It is created with ``mode`` (default 0o660:
  owner and group may connect, nobody else).  Connecting needs write permission on the
  file (and search permission on its directories), so ``chown``/``chmod`` decide who may
  reach the broker.  To leave no window in which the socket exists with the umask's
  looser mode, it is bound under a temporary name in the same directory, chmod'ed, and
  renamed into place (``rename`` is atomic and a bound socket keeps working after it).
* ``@name``: a Linux abstract name (no file; the kernel frees it when the listener
  closes).  Abstract sockets have no permissions: anyone in the network namespace may
  connect, so only the protocol's authentication applies.  Documented, not hidden.

Stale files
-----------
A broker that was killed leaves its socket file behind, and ``bind`` then fails with
EADDRINUSE.  At start the file is removed only if nothing accepts connections on it
(``connect`` answers ECONNREFUSED); if another process is listening, start fails rather
than steal its address (asyncio's own ``create_unix_server`` removes any socket file
unconditionally, which would silently orphan a running broker; hence the own bind).
A path that exists and is not a socket is never touched.  On close the file is removed
if it is still the one this listener created (same inode).

For another protocol's listener (STOMP, MQTT ...)::

    listener = await listen_unix(lambda: StompConnection(server), "/run/baedal/stomp.sock")
    ...
    listener.close()            # stops serving, removes the file
    await listener.wait_closed()

and report the peer as local: ``transport.get_extra_info("peername")`` is not a
``(host, port)`` tuple on a Unix socket (see ``AMQPConnection.connection_made``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

DEFAULT_MODE = 0o660

# The temporary name a socket was bound under (see "Addresses") -> the path it was
# renamed to.  ``getsockname()`` keeps answering the name given to ``bind``, so a
# connection's local address is the temporary one; ``listening_path`` maps it back for
# connection names.  One entry per open listener, removed when it closes.
_renamed: dict[str, str] = {}


def listening_path(sockname: str) -> str:
    """The path clients connect to, for a listening socket's ``getsockname()``."""
    return _renamed.get(sockname, sockname)


def forget_renamed(path: str) -> None:
    """Drop ``listening_path``'s entry for a socket file that is being closed."""
    for temporary in [t for t, final in _renamed.items() if final == path]:
        del _renamed[temporary]


def socket_address(address: str) -> str:
    """The address ``bind``/``connect`` take: ``@name`` becomes the abstract ``\\0name``."""
    if address.startswith("@"):
        return "\0" + address[1:]
    return os.fspath(address)


def is_abstract(address: str) -> bool:
    return address.startswith("@") or address.startswith("\0")


def _remove_if_stale(path: str) -> None:
    """Remove a leftover socket file nobody listens on (see the module docstring)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: nothing accepts on it
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OSError(errno.EADDRINUSE, f"{path}: cannot tell whether it is in use ({exc})") from exc
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use: another process listens on it")


def bind_unix(address: str, mode: int = DEFAULT_MODE) -> socket.socket:
    """A listening-ready (bound, not yet listening) Unix socket at ``address``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if is_abstract(address):
            sock.bind(socket_address(address))
            return sock
        path = os.path.abspath(address)
        _remove_if_stale(path)
        directory = os.path.dirname(path)
        temporary = os.path.join(directory, f".baedal-{os.getpid()}-{os.urandom(4).hex()}.sock")
        if len(temporary.encode()) < 100:
            sock.bind(temporary)
            try:
                os.chmod(temporary, mode)
                os.rename(temporary, path)
                _renamed[temporary] = path
            except BaseException:
                os.unlink(temporary)
                raise
        else:  # a long directory name: bind in place (a short window with the umask's mode)
            sock.bind(path)
            os.chmod(path, mode)
        return sock
    except BaseException:
        sock.close()
        raise


class UnixListener:
    """One protocol served on one Unix socket; ``close`` stops it and removes its file."""

    def __init__(self, server: asyncio.AbstractServer, address: str, inode: int | None) -> None:
        self.server = server
        self.address = address  # as given: a path or @name
        self._inode = inode

    @property
    def path(self) -> str | None:
        """The socket file, or None for an abstract name."""
        return None if is_abstract(self.address) else os.path.abspath(self.address)

    def close(self) -> None:
        self.server.close()
        path = self.path
        if path is not None:
            forget_renamed(path)
        if path is not None and self._inode is not None:
            try:
                if os.lstat(path).st_ino == self._inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    async def wait_closed(self, timeout: float = 2.0) -> None:
        try:
            await asyncio.wait_for(self.server.wait_closed(), timeout)
        except TimeoutError:
            pass


async def listen_unix(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    address: str,
    *,
    mode: int = DEFAULT_MODE,
    backlog: int = 1024,
    **server_options: Any,
) -> UnixListener:
    """Serve ``protocol_factory`` on the Unix socket ``address`` (a path or ``@name``)."""
    sock = bind_unix(address, mode)
    inode = None if is_abstract(address) else os.lstat(os.path.abspath(address)).st_ino
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_unix_server(protocol_factory, sock=sock, backlog=backlog, **server_options)
    except BaseException:
        sock.close()
        if inode is not None:
            os.unlink(os.path.abspath(address))
        raise
    return UnixListener(server, address, inode)


class UnixTransportFactory:
    """aiormq's ``transport_factory`` for AMQP over a Unix socket (the client side)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs.pop("ssl_context_provider", None)
        return await asyncio.open_unix_connection(socket_address(self.address), **kwargs)
