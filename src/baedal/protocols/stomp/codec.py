"""A sans-IO STOMP 1.0 / 1.1 / 1.2 codec: bytes in, ``Frame`` events out; frames in,
bytes out.  No socket, no clock, no ``await``: the TCP listener, the WebSocket handler,
the tests and the fuzzers all drive this same object.

Frame shape (STOMP 1.2 "Augmented BNF")::

    COMMAND EOL *(header EOL) EOL body NUL *(EOL)
    EOL = [CR] LF

Theory of operation
-------------------
``FrameReader.feed(data)`` appends to one buffer and parses every complete frame in it.
Between frames it skips bare EOLs (heart-beats).  The header section is scanned line by
line from where the last call stopped (no rescan of a partial frame), so a frame fed one
byte at a time costs linear time.  When the blank line ends the headers, the body is
either ``content-length`` octets followed by a NUL (the body may then contain NULs) or
everything up to the first NUL.

Limits are checked *before* anything is allocated for the thing they limit, because the
ActiveMQ STOMP CVEs (CVE-2014-3576 and the unbounded header/frame reads that followed)
and RabbitMQ 3.10's reader (no frame or header limit; a negative ``content-length``
crashes it) came from the opposite order:

Parsing stops after a CONNECT/STOMP frame (the version it negotiates decides how the
next frames are unescaped): the caller sets ``version`` and calls ``feed(b"")`` for
whatever followed it in the same read.

* ``max_header_line``: a header (or command) line longer than this is refused as soon as
  that many bytes are buffered without an EOL;
* ``max_headers``: header count per frame;
* ``max_header_bytes``: the whole header section, checked while it is still arriving;
* ``max_body``: a ``content-length`` above it (or not a plain non-negative decimal) is
  refused when its header is parsed, before one body byte is buffered; a body without
  ``content-length`` is refused once that many bytes arrive without a NUL.

The buffered input is therefore bounded by ``max_header_bytes + max_body`` plus one read.

Errors: ``StompError`` means "the peer broke the protocol" (the server answers ERROR and
closes).  Once raised, the reader stays broken and raises the same error on every later
``feed`` (the h11 habit: an errored connection stays errored).  A caller misusing the
encoder gets ``ValueError``, the other family.

Header escaping depends on the version negotiated (``FrameReader.version`` /
``encode_frame(version=...)``): 1.0 has none, 1.1 defines ``\\n \\c \\\\``, 1.2 adds
``\\r``; an undefined escape is a fatal protocol error.  CONNECT and CONNECTED frames are
never escaped (1.2 spec, "Value Encoding").  Repeated headers: the first wins
(``Frame.get``), all are kept in order (``Frame.headers``).
"""

from __future__ import annotations

from collections.abc import Iterable

VERSIONS = ("1.0", "1.1", "1.2")

CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
# Only these may carry a body (1.2 spec, "Frames and Headers"); the others must not.
BODY_COMMANDS = frozenset({"SEND", "MESSAGE", "ERROR"})
_CONNECT_COMMANDS = frozenset({"CONNECT", "STOMP"})
# Frames whose headers are never escaped (1.2 spec, "Value Encoding").
UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED", "STOMP"})

# Defaults, after ActiveMQ's (maxHeaders 1000, maxHeaderLength 10 KiB) with a total for
# the header section, which ActiveMQ lacks; the body bound follows the broker's
# max_message_size unless configured.
DEFAULT_MAX_HEADERS = 1000
DEFAULT_MAX_HEADER_LINE = 10 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BODY = 128 * 1024 * 1024


class StompError(Exception):
    """The peer broke the protocol (or a limit): answer ERROR with ``message`` and close."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message if not detail else f"{message}: {detail}")
        self.message = message
        self.detail = detail


class Frame:
    """One STOMP frame.  ``headers`` keeps every header in wire order (decoded, unescaped);
    ``get`` returns the first occurrence, as the spec requires."""

    __slots__ = ("command", "headers", "body", "_map")

    def __init__(self, command: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.command = command
        self.headers = headers if headers is not None else []
        self.body = body
        self._map: dict[str, str] | None = None

    @property
    def header_map(self) -> dict[str, str]:
        """Name -> value with the first occurrence winning."""
        found = self._map
        if found is None:
            found = {}
            for name, value in self.headers:
                if name not in found:
                    found[name] = value
            self._map = found
        return found

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.header_map.get(name, default)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Frame)
            and self.command == other.command
            and self.headers == other.headers
            and self.body == other.body
        )

    def __repr__(self) -> str:
        return f"<Frame {self.command} {self.headers!r} body={len(self.body)}B>"


# --- header escaping ---------------------------------------------------------------------

_ESCAPES_11 = {"n": "\n", "c": ":", "\\": "\\"}
_ESCAPES_12 = {"n": "\n", "c": ":", "\\": "\\", "r": "\r"}


def unescape(value: str, version: str) -> str:
    """Undo header-value escaping for ``version``; an undefined escape is fatal."""
    if version == "1.0" or "\\" not in value:
        return value
    table = _ESCAPES_12 if version == "1.2" else _ESCAPES_11
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        char = value[i]
        if char != "\\":
            j = value.find("\\", i)
            if j < 0:
                j = n
            out.append(value[i:j])
            i = j
            continue
        if i + 1 >= n:
            raise StompError("Invalid header", f"incomplete escape at the end of {value[:64]!r}")
        replacement = table.get(value[i + 1])
        if replacement is None:
            raise StompError("Invalid header", f"undefined escape '\\{value[i + 1]}' (STOMP {version})")
        out.append(replacement)
        i += 2
    return "".join(out)


def escape(value: str, version: str) -> str:
    """Escape a header value for ``version``.  STOMP 1.0 has no escaping: an LF (which
    would end the header) becomes a space there, the only lossless-enough choice."""
    if version == "1.0":
        return value.replace("\n", " ") if "\n" in value else value
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if ":" in value:
        value = value.replace(":", "\\c")
    if version == "1.2" and "\r" in value:
        value = value.replace("\r", "\\r")
    return value


# --- negotiation helpers -----------------------------------------------------------------


def negotiate_version(accept_version: str | None) -> str | None:
    """The highest version both sides speak; an absent header means 1.0 (spec); None
    when there is no common version (answer ERROR with a ``version`` header)."""
    if accept_version is None:
        return "1.0"
    offered = {v.strip() for v in accept_version.split(",")}
    for version in reversed(VERSIONS):
        if version in offered:
            return version
    return None


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    """``cx,cy`` in milliseconds; absent means ``0,0``."""
    if value is None:
        return 0, 0
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and len(p.strip()) <= 10 for p in parts):
        raise StompError("Invalid heart-beat header", repr(value[:64]))
    return int(parts[0]), int(parts[1])


# --- reading -----------------------------------------------------------------------------

_AWAITING_COMMAND = 0
_IN_HEADERS = 1
_IN_BODY = 2


class FrameReader:
    """Incremental parser (see the module docstring)."""

    def __init__(
        self,
        *,
        commands: frozenset[str] = CLIENT_COMMANDS,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_line: int = DEFAULT_MAX_HEADER_LINE,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body: int = DEFAULT_MAX_BODY,
        version: str = "1.2",
    ) -> None:
        self.commands = commands
        self.max_headers = max_headers
        self.max_header_line = max_header_line
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        # Escaping rules for frames after CONNECT: the server sets the negotiated version.
        self.version = version
        self._buffer = bytearray()
        self._scan = 0  # where the next line search starts
        self._state = _AWAITING_COMMAND
        self._frame_start = 0
        self._command = ""
        self._lines: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body_start = 0
        self._content_length: int | None = None
        self._error: StompError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (bounded: module docstring)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Parse ``data`` (appended to what is buffered); every complete frame, in order."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        try:
            consumed = self._parse(buffer, frames)
        except StompError as exc:
            self._error = exc
            # Frames parsed before the bad one are still the peer's valid requests; the
            # caller gets them with the error (``exc.frames``) and handles them first.
            exc.frames = frames  # type: ignore[attr-defined]
            self._buffer = bytearray()
            raise
        if consumed:
            del buffer[:consumed]
            self._scan -= consumed
            self._frame_start -= consumed
            self._body_start -= consumed
        return frames

    def _parse(self, buffer: bytearray, frames: list[Frame]) -> int:
        """Parse from the saved state; returns the bytes consumed by complete frames."""
        consumed = 0
        size = len(buffer)
        while True:
            state = self._state
            if state == _AWAITING_COMMAND:
                # Skip heart-beat EOLs between frames.
                pos = consumed
                while pos < size and buffer[pos] in (10, 13):
                    if buffer[pos] == 13:
                        if pos + 1 >= size:
                            break  # a CR whose LF has not arrived
                        if buffer[pos + 1] != 10:
                            raise StompError("Invalid frame", "CR not followed by LF")
                    pos += 1
                consumed = pos
                if pos >= size or buffer[pos] == 13:
                    self._scan = consumed
                    return consumed
                self._frame_start = pos
                self._scan = pos
                self._state = _IN_HEADERS
                self._command = ""
                self._lines = []
                self._header_bytes = 0
            elif state == _IN_HEADERS:
                if not self._read_headers(buffer, size):
                    return consumed
            else:
                end = self._read_body(buffer, size, frames)
                if end < 0:
                    return consumed
                consumed = end
                self._state = _AWAITING_COMMAND
                if frames[-1].command in _CONNECT_COMMANDS:
                    # The frames after CONNECT are unescaped by the version it
                    # negotiates: stop here so the caller can set ``version`` first,
                    # then ``feed(b"")`` for the rest.
                    return consumed

    def _read_headers(self, buffer: bytearray, size: int) -> bool:
        """Consume header lines; True once the blank line ending them was read."""
        line_start = self._scan
        limit = self.max_header_line
        while True:
            eol = buffer.find(b"\n", line_start)
            if eol < 0:
                pending = size - line_start
                if pending > limit:
                    raise StompError("Header too long", f"a line exceeds {limit} bytes")
                if self._header_bytes + pending > self.max_header_bytes:
                    raise StompError("Headers too large", f"over {self.max_header_bytes} bytes")
                self._scan = line_start
                return False
            end = eol
            if end > line_start and buffer[end - 1] == 13:
                end -= 1
            length = end - line_start
            if length > limit:
                raise StompError("Header too long", f"a line exceeds {limit} bytes")
            self._header_bytes += eol + 1 - line_start
            if self._header_bytes > self.max_header_bytes:
                raise StompError("Headers too large", f"over {self.max_header_bytes} bytes")
            line = bytes(buffer[line_start:end])
            line_start = eol + 1
            if not self._command:
                self._command = self._decode_command(line)
                continue
            if not line:
                self._scan = line_start
                self._finish_headers()
                self._body_start = line_start
                self._scan = line_start
                self._state = _IN_BODY
                return True
            if len(self._lines) >= self.max_headers:
                raise StompError("Too many headers", f"more than {self.max_headers}")
            self._lines.append(line)

    def _decode_command(self, line: bytes) -> str:
        try:
            command = line.decode("ascii")
        except UnicodeDecodeError:
            raise StompError("Invalid command", repr(line[:32])) from None
        if command not in self.commands:
            raise StompError("Invalid command", repr(command[:32]))
        return command

    def _finish_headers(self) -> None:
        command = self._command
        version = "1.0" if command in UNESCAPED_COMMANDS else self.version
        headers: list[tuple[str, str]] = []
        content_length: int | None = None
        seen_length = False
        for raw in self._lines:
            colon = raw.find(b":")
            if colon < 0:
                raise StompError("Invalid header", f"no ':' in {raw[:64]!r}")
            try:
                name = raw[:colon].decode("utf-8")
                value = raw[colon + 1 :].decode("utf-8")
            except UnicodeDecodeError:
                raise StompError("Invalid header", "not UTF-8") from None
            if version != "1.0":
                name = unescape(name, version)
                value = unescape(value, version)
            headers.append((name, value))
            if name == "content-length" and not seen_length:
                seen_length = True  # the first occurrence wins
                content_length = self._parse_content_length(value)
        self._headers = headers
        self._content_length = content_length

    def _parse_content_length(self, value: str) -> int:
        # A plain non-negative decimal only: "-1" crashes RabbitMQ 3.10's reader, "+5"
        # and " 5" are not octet counts.  Bounded before a single body byte is kept.
        if not value.isdigit() or not value.isascii():
            raise StompError("Invalid content-length", repr(value[:32]))
        if len(value) > 19 or int(value) > self.max_body:
            raise StompError("Frame too large", f"content-length {value[:32]} exceeds {self.max_body} bytes")
        return int(value)

    def _read_body(self, buffer: bytearray, size: int, frames: list[Frame]) -> int:
        """The offset after the frame's NUL, or -1 while the body is incomplete."""
        start = self._body_start
        length = self._content_length
        if length is not None:
            if size < start + length + 1:
                return -1
            if buffer[start + length] != 0:
                raise StompError("Invalid frame", "body longer than content-length (no NUL after it)")
            end = start + length
        else:
            end = buffer.find(b"\0", self._scan)
            if end < 0:
                if size - start > self.max_body:
                    raise StompError("Frame too large", f"body exceeds {self.max_body} bytes")
                self._scan = size
                return -1
            if end - start > self.max_body:
                raise StompError("Frame too large", f"body exceeds {self.max_body} bytes")
        command = self._command
        if end > start and command not in BODY_COMMANDS:
            raise StompError("Invalid frame", f"{command} frames must not have a body")
        frames.append(Frame(command, self._headers, bytes(buffer[start:end])))
        self._headers = []
        return end + 1


# --- writing -----------------------------------------------------------------------------


def encode_frame(
    command: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "1.2",
) -> bytes:
    """One frame as bytes.  Header values are escaped for ``version`` (never on
    CONNECT/CONNECTED); LF line ends, which every version accepts."""
    if "\n" in command or "\r" in command:
        raise ValueError(f"invalid command {command!r}")
    raw = version == "1.0" or command in UNESCAPED_COMMANDS
    if not isinstance(headers, list):
        headers = list(headers)
    # Fast path (every MESSAGE goes through here): one scan of all names and values
    # for the characters escaping cares about; usually there are none.
    text = "".join([f"{name}{value}" for name, value in headers])
    if "\\" not in text and "\n" not in text and ":" not in text and "\r" not in text:
        lines = [f"{name}:{value}" for name, value in headers]
        return b"".join(("\n".join([command, *lines, "", ""]).encode("utf-8"), body, b"\0"))
    parts = [command]
    for name, value in headers:
        if raw:
            if command in UNESCAPED_COMMANDS and ("\n" in name or "\n" in value or ":" in name):
                raise ValueError(f"header {name!r} cannot be sent unescaped")
            parts.append(f"{escape(name, '1.0')}:{escape(value, '1.0')}")
        else:
            parts.append(f"{escape(name, version)}:{escape(value, version)}")
    parts.append("")
    parts.append("")
    head = "\n".join(parts).encode("utf-8")
    return b"".join((head, body, b"\0"))
