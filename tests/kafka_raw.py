"""A raw, blocking Kafka client for tests: requests encoded with kio (the same generated
schemas the broker decodes with), one at a time, the response decoded for the caller."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_payload_module
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

__all__ = ["RawKafka"]


class RawKafka:
    """A blocking Kafka connection that speaks through kio, one request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, api_key: int, version: int, body: Any) -> bytes:
        self.correlation += 1
        out = io.BytesIO()
        out.write(struct.pack(">hhih", api_key, version, self.correlation, 4) + b"test")
        if type(body).__flexible__:
            out.write(b"\0")  # request header v2: no tagged fields
        entity_writer(type(body))(out, body)
        data = out.getvalue()
        return struct.pack(">i", len(data)) + data

    def request(self, api_key: int, version: int, **values: Any) -> Any:
        module = load_payload_module(api_key, version, EntityType.request)
        cls = next(
            v
            for v in vars(module).values()
            if isinstance(v, type) and getattr(v, "__type__", None) is EntityType.request
        )
        self.send_raw(self.frame(api_key, version, cls(**values)))
        return self.response(api_key, version)

    def read_frame(self) -> bytes:
        size = struct.unpack(">i", self._read(4))[0]
        return self._read(size)

    def response(self, api_key: int, version: int) -> Any:
        data = self.read_frame()
        correlation = struct.unpack_from(">i", data, 0)[0]
        assert correlation == self.correlation
        module = load_payload_module(api_key, version, EntityType.response)
        cls = next(
            v
            for v in vars(module).values()
            if isinstance(v, type) and getattr(v, "__type__", None) is EntityType.response
        )
        offset = 4 + (1 if cls.__header_schema__.__flexible__ else 0)
        body, _ = entity_reader(cls)(data, offset)
        return body

    def _read(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = self.sock.recv(count)
            if not chunk:
                raise ConnectionError("closed by the broker")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
