"""The bench's HTTP/1.1 client (gateway/bench/wire.py) against a small asyncio server that
answers in each body framing the servers under test use: chunked (uvicorn), Content-Length, and
a body that ends when the server closes (``mlx_lm.server``)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bench.wire import Pool, WireError

LINES = [b"data: one", b"", b"data: two", b"", b"data: [DONE]", b""]
BODY = b"\n".join(LINES)


def chunked(body: bytes) -> bytes:
    parts = [body[:7], body[7:20], body[20:]]  # chunks that end mid-line
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def serve(framing: str, seen: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b"":
            fields = head.split(b"\r\n")
            length = next((int(x.split(b":")[1]) for x in fields if x.lower().startswith(b"content-length")), 0)
            seen.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
            if framing == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY))
            elif framing == "length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            else:  # HTTP/1.0 style: the body ends with the connection
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + BODY)
                await writer.drain()
                writer.close()
                return
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_lines_arrive_whole_in_every_framing_and_connections_are_reused(framing: str) -> None:
    async def run() -> tuple[list[list[bytes]], list[bytes], int]:
        seen: list[bytes] = []
        server = await serve(framing, seen)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}/base", {"Authorization": "Bearer k"})
        out = []
        for i in range(3):
            r = await pool.request("POST", "/v1/x", b'{"i": %d}' % i)
            assert r.status == 200
            out.append([line async for line in r.lines()])
            r.close()
        idle = pool.idle
        await pool.aclose()
        server.close()
        await server.wait_closed()
        return out, seen, idle

    out, seen, idle = asyncio.run(run())
    assert out == [LINES[:-1]] * 3  # the last empty line is the body's end
    assert seen == [b'POST /base/v1/x HTTP/1.1 {"i": %d}' % i for i in range(3)]
    assert idle == (0 if framing == "close" else 1)  # one connection served all three, or none is kept


def test_a_server_that_is_not_there_is_a_wire_error() -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await Pool(f"http://127.0.0.1:{port}").request("GET", "/health")

    with pytest.raises(WireError):
        asyncio.run(run())


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Pool("ftp://example.com")
