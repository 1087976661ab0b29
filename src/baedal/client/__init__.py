"""``baedal.client``: a small client with ZeroMQ's shape over a broker.

::

    from baedal.client import Context, PUSH, PULL
    with Context() as ctx:
        push = ctx.socket(PUSH, "jobs").connect("tcp://127.0.0.1:5672")
        pull = ctx.socket(PULL, "jobs").connect("tcp://127.0.0.1:5672")
        push.send(b"work")
        assert pull.recv() == b"work"

One URL scheme: ``inproc://NAME`` (an embedded broker in this process, no socket),
``ipc:///path`` or ``ipc://@name`` (AMQP over a Unix socket), ``tcp://host:port``.
Patterns and how they map onto queues and exchanges: ``sockets.py``; transports and
reconnection: ``links.py``; the synchronous wrapper: ``sync.py``.
"""

from .links import ClientError, Delivery, Disconnected, parse_endpoint
from .sockets import KINDS, PUB, PULL, PUSH, REP, REQ, SUB, AsyncContext, AsyncSocket
from .sync import Context, Socket

__all__ = [
    "KINDS",
    "PUB",
    "PULL",
    "PUSH",
    "REP",
    "REQ",
    "SUB",
    "AsyncContext",
    "AsyncSocket",
    "ClientError",
    "Context",
    "Delivery",
    "Disconnected",
    "Socket",
    "parse_endpoint",
]
