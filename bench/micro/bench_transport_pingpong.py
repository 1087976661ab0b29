"""Micro-benchmark: server CPU per ping-pong round trip, the event loop's TCP transport vs
the light epoll transport (``src/baedal/transport/epoll.py``), same process, interleaved.

    PYTHONPATH=src .venv/bin/python bench/micro/bench_transport_pingpong.py [--trips 20000] [--rounds 3]

An echo protocol is served by each transport in turn; a blocking client thread sends 64
bytes and waits for them back, ``--trips`` times.  Reported per round and transport (one
JSON line each): the process's CPU time minus the client thread's, per round trip, in
µs, so the figure is the server side (loop wake-ups, the read, ``data_received``, the
write).  CPU time, not wall time, because this machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from baedal.transport import epoll


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def client(port: int, trips: int, out: list[float]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * 64
    start = time.thread_time()
    for _ in range(trips):
        sock.sendall(message)
        got = 0
        while got < len(message):
            got += len(sock.recv(64))
    out.append(time.thread_time() - start)
    sock.close()


async def run(kind: str, trips: int) -> float:
    loop = asyncio.get_running_loop()
    server: Any
    if kind == "epoll":
        server = await epoll.EpollListener.create(Echo, "127.0.0.1", 0)
        port = server.port
    else:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    out: list[float] = []
    thread = threading.Thread(target=client, args=(port, trips, out))
    start = time.process_time()
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)
    total = time.process_time() - start
    server.close()
    await server.wait_closed()
    return (total - out[0]) / trips * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trips", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not epoll.available():
        print("select.epoll not available", file=sys.stderr)
        return 2
    try:
        import uvloop

        loops = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    except ImportError:
        loops = {"asyncio": asyncio.new_event_loop}
    for rnd in range(1, args.rounds + 1):
        for loop_name, new_loop in loops.items():
            for kind in ("loop-transport", "epoll"):
                loop = new_loop()
                try:
                    us = loop.run_until_complete(run(kind, args.trips))
                finally:
                    loop.close()
                print(json.dumps({"round": rnd, "loop": loop_name, "transport": kind, "trips": args.trips,
                                  "server_cpu_us_per_trip": round(us, 2), "load1": round(os.getloadavg()[0], 2)}),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
