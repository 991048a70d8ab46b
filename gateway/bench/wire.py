"""The bench's HTTP/1.1 client: a streamed POST read line by line, and a GET, on plain asyncio
streams with a pool of kept-alive connections.

Why not httpx: the bench's client shares the machine with the server it measures, and at 64
streams it read each SSE event through httpx, httpcore, anyio and h11 (py-spy on the 2-core CPU:
~270 µs of client CPU a token frame against the gateway's ~120 µs, 42% of the client's samples
inside httpx's ``aiter_lines``). A client that costs more than the server lags behind it: the
TTFT and ITL it records include its own event loop's delay, which the in-process reference
(``--raw``) never pays. This one parses the status line and headers once and then only splits
bytes into lines: what any SSE client must do at the least.

It speaks what the servers under test answer: ``Content-Length`` bodies, chunked bodies, and
bodies that end when the server closes the connection (``mlx_lm.server``'s). https works through
the ``ssl`` module's default context.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class WireError(Exception):
    """The connection failed or the server broke HTTP/1.1 (the only error this module raises)."""


class Response:
    """A response whose body is read as it comes: ``lines()`` or ``read()``, once."""

    def __init__(self, status: int, headers: dict[str, str], conn: _Conn, pool: Pool) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._pool = pool
        self._done = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._framed():
                yield data
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:  # a bad chunk size: ValueError
            raise WireError(f"{type(e).__name__}: {e}") from e

    async def _framed(self) -> AsyncIterator[bytes]:
        r = self._conn.reader
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await r.readline()).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await r.readline()).strip():  # trailers, then the blank line
                        pass
                    break
                yield await r.readexactly(size)
                await r.readexactly(2)
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left:
                data = await r.read(min(left, 1 << 16))
                if not data:
                    raise WireError("the connection closed inside the body")
                left -= len(data)
                yield data
        else:  # the body ends with the connection
            self._conn.reusable = False
            while data := await r.read(1 << 16):
                yield data
        self._done = True

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines, without their line ends, as they arrive."""
        rest = b""
        async for data in self._chunks():
            rest += data
            if b"\n" not in data:
                continue
            *done, rest = rest.split(b"\n")
            for line in done:
                yield line.rstrip(b"\r")
        if rest:
            yield rest.rstrip(b"\r")

    async def read(self) -> bytes:
        return b"".join([data async for data in self._chunks()])

    def close(self) -> None:
        """Give the connection back (kept alive only if the body was read to its end)."""
        self._pool.give_back(self._conn, self._done)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True


class Pool:
    """Connections to one base URL; a connection is reused once its last response was read."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 900) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.base = u.path.rstrip("/")
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        authority = u.netloc.rsplit("@", 1)[-1]
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": authority, **(headers or {})}.items())
        self.timeout = timeout
        self._idle: list[_Conn] = []

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send the request and read the status line and headers (the timeout covers these; a
        body's reads wait as long as the server takes)."""
        conn = self._idle.pop() if self._idle else None
        try:
            return await asyncio.wait_for(self._send(conn, method, path, body), self.timeout)
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as e:
            raise WireError(f"{type(e).__name__}: {e}") from e

    async def _send(self, reused: _Conn | None, method: str, path: str, body: bytes | None) -> Response:
        conn = reused
        if conn is None:
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=1 << 20)
            conn = _Conn(reader, writer)
        head = f"{method} {self.base}{path} HTTP/1.1\r\n{self.head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        conn.writer.write((head + "\r\n").encode() + (body or b""))
        status_line = await conn.reader.readline()
        if not status_line and reused is not None:  # a kept-alive connection the server closed: once more
            conn.writer.close()
            return await self._send(None, method, path, body)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise WireError(f"not an HTTP status line: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        while (line := await conn.reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            conn.reusable = False
        return Response(int(parts[1]), headers, conn, self)

    @property
    def idle(self) -> int:
        """Connections kept alive for the next request."""
        return len(self._idle)

    def give_back(self, conn: _Conn, finished: bool) -> None:
        if finished and conn.reusable:
            self._idle.append(conn)
        else:
            conn.writer.close()

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.writer.close()
        self._idle = []
