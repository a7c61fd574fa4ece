"""A lean fake Lambda Invoke endpoint for the benchmark: asyncio, HTTP/1.1 keep-alive.

tests/lambda_endpoint.py (http.server, one thread per connection, every request recorded)
is made for assertions, not for speed. This one only counts: it answers every
``POST /2015-03-31/functions/{name}/invocations`` with ``202`` and an empty body, as Lambda
does for ``x-amz-invocation-type: Event``, so that the benchmark measures the extension's
worker and not the endpoint.

Run it as its own process (its own CPU, no GIL shared with the driver):

    python bench/fast_endpoint.py --port P [--hang-port Q]

It prints one line ``ready <port> <hang-port>`` once listening, on 127.0.0.1 only.

- ``--port``: answers 202 at once ("ok"), or holds every request unanswered while the
  control switch ``hold`` is on.
- ``--hang-port``: never answers an Invoke (the "endpoint hanging" configuration); requests
  are answered only when the process stops.
- Control, on ``--port``: ``GET /_bench/stats`` → ``{"invokes": N, "held": H}``;
  ``POST /_bench/hold`` holds requests from now on; ``POST /_bench/release`` answers every
  held request with 202 and stops holding.

It stops on SIGTERM/SIGINT, and with ``--watch-stdin`` also when its standard input closes
(the driver passes a pipe, so the endpoint never outlives it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

INVOKE_PREFIX = b"/2015-03-31/functions/"
ACCEPTED = (b"HTTP/1.1 202 Accepted\r\n"
            b"x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n"
            b"Content-Length: 0\r\n\r\n")
MAX_HEADER = 64 * 1024
MAX_BODY = 8 * 1024 * 1024


def _reply(status: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class State:
    def __init__(self):
        self.invokes = 0  # Invoke requests received (answered or held)
        self.held: list[asyncio.Transport] = []  # one entry per held request
        self.hold = False
        self.transports: set[asyncio.Transport] = set()

    def release(self):
        held, self.held, self.hold = self.held, [], False
        for transport in held:
            if not transport.is_closing():
                transport.write(ACCEPTED)


class HttpProtocol(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests with Content-Length bodies; answers in order."""

    def __init__(self, state: State, hang: bool):
        self.state = state
        self.hang = hang
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.state.transports.add(transport)

    def connection_lost(self, exc):
        self.state.transports.discard(self.transport)

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end])
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length > MAX_BODY:
                self.transport.close()
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            self.handle(lines[0])

    def handle(self, request_line: bytes):
        parts = request_line.split(b" ")
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
        state = self.state
        if method == b"POST" and path.startswith(INVOKE_PREFIX):
            state.invokes += 1
            if self.hang:
                return  # never answered (until the process stops)
            if state.hold:
                state.held.append(self.transport)
                return
            self.transport.write(ACCEPTED)
        elif path == b"/_bench/stats":
            body = json.dumps({"invokes": state.invokes, "held": len(state.held)}).encode()
            self.transport.write(_reply("200 OK", body))
        elif method == b"POST" and path == b"/_bench/hold":
            state.hold = True
            self.transport.write(_reply("204 No Content"))
        elif method == b"POST" and path == b"/_bench/release":
            state.release()
            self.transport.write(_reply("204 No Content"))
        else:
            self.transport.write(_reply("404 Not Found", b'{"message":"not found"}'))


async def serve(port: int, hang_port: int | None, watch_stdin: bool):
    loop = asyncio.get_running_loop()
    state = State()
    servers = [await loop.create_server(lambda: HttpProtocol(state, hang=False),
                                        "127.0.0.1", port, backlog=1024)]
    actual_port = servers[0].sockets[0].getsockname()[1]
    actual_hang = 0
    if hang_port is not None:
        servers.append(await loop.create_server(lambda: HttpProtocol(state, hang=True),
                                                "127.0.0.1", hang_port, backlog=1024))
        actual_hang = servers[1].sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:  # stop when the driver goes away (our stdin is its pipe)
        loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(65536) or stop.set())
    print(f"ready {actual_port} {actual_hang}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    state.release()
    for transport in list(state.transports):
        transport.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hang-port", type=int, default=None)
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.hang_port, args.watch_stdin))


if __name__ == "__main__":
    main()
