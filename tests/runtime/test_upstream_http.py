"""The gateway's upstream client against a raw HTTP/1.1 server on 127.0.0.1 that answers with scripted bytes, split
across reads the way a real network splits them: bodies arrive whole, connections are reused only when an answer
has ended, and a replica that hangs up, stalls or refuses shows as the error types the gateway handles."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from runtime.serve.upstream_http import UpstreamClient

JSON = {"Content-Type": "application/json"}
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


async def _serve(answer: Answer) -> tuple[asyncio.Server, str, list[int]]:
    """A server whose every connection runs `answer` until the client hangs up; counts connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions", connections


async def _dribble(writer: asyncio.StreamWriter, data: bytes, piece: int) -> None:
    for at in range(0, len(data), piece):
        writer.write(data[at : at + piece])
        await writer.drain()
        await asyncio.sleep(0)


def _chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return body + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_chunked_answer_split_anywhere_is_read_whole_and_the_connection_reused(piece: int) -> None:
    stream = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
            await _dribble(writer, head + _chunked(*stream, trailer=b"X-T: 1\r\n"), piece)

    async def main() -> None:
        server, url, connections = await _serve(answer)
        client = UpstreamClient(2, 5)
        for _ in range(3):
            response = await client.post(url, b'{"stream": true}', JSON)
            assert response.status == 200
            assert response.headers["x-a"] == "b"
            received = [data async for data in response.content.iter_any()]
            assert b"".join(received) == b"".join(stream)
            response.release()
        assert len(connections) == 1
        await client.close()
        server.close()

    asyncio.run(main())


def test_content_length_and_close_delimited_answers() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()

    async def main() -> None:
        server, url, connections = await _serve(answer)
        client = UpstreamClient(2, 5)
        response = await client.post(url, b'{"a": 1}', JSON)
        assert await response.read() == b'{"a": 1}'
        response.release()
        response = await client.post(url, b'{"b": 2}', JSON)
        assert response.status == 400
        assert await response.read() == b'{"b": 2}'
        response.release()
        response = await client.post(url, b"{}", JSON)  # the last answer closed its connection: a new one
        assert await response.read() == b"{}"
        assert len(connections) == 2
        await client.close()
        server.close()

    asyncio.run(main())


def test_a_stream_released_before_its_terminator_keeps_its_connection() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        server, url, connections = await _serve(answer)
        client = UpstreamClient(2, 5)
        for _ in range(2):
            response = await client.post(url, b"{}", JSON)
            assert await response.content.readany() == b"data: [DONE]\n\n"
            response.release()  # the gateway stops reading at [DONE]
            await asyncio.sleep(0.2)
        assert len(connections) == 1
        await client.close()
        server.close()

    asyncio.run(main())


def test_replica_failures_raise_what_the_gateway_handles() -> None:
    async def hang_up_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nda")
        await writer.drain()

    async def hang_up_before_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        client = UpstreamClient(2, 0.3)
        server, url, _ = await _serve(hang_up_mid_body)
        response = await client.post(url, b"{}", JSON)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        server.close()
        server, url, _ = await _serve(hang_up_before_answering)
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post(url, b"{}", JSON)
        server.close()
        server, url, _ = await _serve(stall)
        with pytest.raises(TimeoutError):
            await client.post(url, b"{}", JSON)
        server.close()
        port = url.rsplit(":", 1)[1].split("/")[0]
        await server.wait_closed()
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post(f"http://127.0.0.1:{port}/v1/completions", b"{}", JSON)
        await client.close()

    asyncio.run(main())


def test_a_kept_alive_connection_the_replica_closes_as_the_request_goes_is_retried_on_a_new_one() -> None:
    """uvicorn (trtllm-serve) closes a connection idle for 5 s; a request sent on it just then gets no answer. It goes
    again on a new connection: the client sees its answer, not an error that would take the replica out."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"

    async def answer_once_then_close_on_the_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(ok)
        await writer.drain()
        await _read_request(reader)  # the second request on this connection: closed unanswered (idle timeout race)

    async def main() -> None:
        server, url, connections = await _serve(answer_once_then_close_on_the_next)
        client = UpstreamClient(2, 5)
        for _ in range(3):
            response = await client.post(url, b"{}", JSON)
            assert response.status == 200 and await response.read() == b"{}"
            response.release()
        assert len(connections) == 3  # each request after the first was refused on the old connection, sent on a new
        # a new connection that closes unanswered is the replica's fault: raised, not retried for ever
        server.close()
        await server.wait_closed()

        async def close_unanswered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)

        server, url, connections = await _serve(close_unanswered)
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post(url, b"{}", JSON)
        assert len(connections) == 1
        await client.close()
        server.close()

    asyncio.run(main())
