"""Measures the ceiling of bench/fast_endpoint.py: Invoke requests per second it answers.

    python bench/endpoint_load.py --port P [--connections 16] [--seconds 3]

Like the extension's worker, it keeps `connections` HTTP/1.1 keep-alive connections, each
with one request in flight at a time, and sends a payload of the size of a login event.
Prints one JSON line: {"requests": N, "seconds": S, "per_second": R}. The client is itself
Python, so the number is a lower bound of the endpoint's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

BODY = json.dumps({"schemaVersion": 1, "event": "login", "status": "success",
                   "userName": "bench_trust", "databaseName": "postgres",
                   "remoteHost": "127.0.0.1", "remotePort": 51234, "applicationName": "pgbench",
                   "authMethod": "trust", "ssl": False, "sslVersion": None, "sslCipher": None,
                   "backendPid": 12345, "timestamp": "2026-12-03 15:38:41",
                   "time": "2026-12-03T15:38:41.123456Z",
                   "server": {"host": "bench", "port": 5432, "clusterName": None,
                              "systemIdentifier": "7312345678901234567", "version": "15.20",
                              "inRecovery": False}}).encode()


def request(port: int) -> bytes:
    return (f"POST /2015-03-31/functions/recorder/invocations HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nx-amz-invocation-type: Event\r\n"
            f"content-type: application/octet-stream\r\n"
            f"authorization: AWS4-HMAC-SHA256 Credential=test/20261203/us-east-1/lambda/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}\r\n"
            f"x-amz-date: 20261203T153841Z\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


class Client(asyncio.Protocol):
    def __init__(self, req: bytes, deadline: float, counter: list, done: asyncio.Future):
        self.req, self.deadline, self.counter, self.done = req, deadline, counter, done
        self.buffer = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.req)

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[:end + 4 + length]
            if head.startswith(b"http/1.1 202"):
                self.counter[0] += 1
            if time.monotonic() >= self.deadline:
                self.transport.close()
                return
            self.transport.write(self.req)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def run(port: int, connections: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    counter = [0]
    req = request(port)
    start = time.monotonic()
    deadline = start + seconds
    waits = []
    for _ in range(connections):
        done = loop.create_future()
        await loop.create_connection(lambda d=done: Client(req, deadline, counter, d),
                                     "127.0.0.1", port)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), seconds + 10)
    elapsed = time.monotonic() - start
    return {"requests": counter[0], "seconds": round(elapsed, 3),
            "per_second": round(counter[0] / elapsed, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.port, args.connections, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
