"""A fake AWS Lambda Invoke endpoint for the integration tests.

It speaks just enough of ``POST /2015-03-31/functions/{FunctionName}/invocations``
for the extension's background worker, records every request it receives and
can be switched into failure modes:

    ok              202 for Event, 200 with body ``null`` for RequestResponse
    http500         500 ServiceException (optionally only for the next N requests)
    hang            accept the request and answer nothing until released
    function_error  200 + ``X-Amz-Function-Error: Unhandled``
    not_found       404 ResourceNotFoundException
    forbidden       403 AccessDeniedException

``stop()`` closes the listening socket (clients then get "connection refused");
``start()`` listens again on the same port.  Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
MODES = ("ok", "http500", "hang", "function_error", "not_found", "forbidden")
HANG_LIMIT_SECONDS = 120  # a hung request is answered at the latest after this


@dataclass
class Request:
    """One request as received by the endpoint."""

    method: str
    raw_path: str
    function: str | None  # FunctionName, URL-decoded; None if the path is not an Invoke path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    mode: str  # the mode that answered it
    received_at: float = field(default_factory=time.time)

    @property
    def invocation_type(self) -> str | None:
        return self.headers.get("x-amz-invocation-type")

    @property
    def payload(self):
        """The body parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def field(self, key: str):
        """payload[key] if the payload is a JSON object, else None."""
        payload = self.payload
        return payload.get(key) if isinstance(payload, dict) else None


_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$")


def sigv4_problem(request: Request, secret_key: str, session_token: str | None = None) -> str | None:
    """Why `request`'s SigV4 signature is wrong, or None when AWS would accept it.

    The signature is recomputed from what arrived on the wire (method, raw path, the signed
    headers, the body) by botocore, AWS's own Python signer: an independent check of the
    extension's signer.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = _AUTHORIZATION.match(request.headers.get("authorization", ""))
    if not match:
        return f"no SigV4 authorization header: {request.headers.get('authorization')!r}"
    signed = match["signed"].split(";")
    missing = [name for name in ("host", "x-amz-date") if name not in signed]
    if missing:
        return f"headers not signed: {missing}"
    aws_request = AWSRequest(method=request.method, url=f"http://{request.headers['host']}{request.raw_path}",
                             data=request.body, headers={name: request.headers[name] for name in signed})
    aws_request.context["timestamp"] = request.headers["x-amz-date"]
    signer = SigV4Auth(Credentials(match["key"], secret_key, session_token), match["service"], match["region"])
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if expected != match["signature"]:
        return f"signature {match['signature']} != {expected} for canonical request:\n{canonical}"
    return None


def _error_body(kind: str, message: str) -> bytes:
    return json.dumps({"Type": kind, "message": message}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        pass

    def setup(self):
        super().setup()
        self.server.endpoint._track(self.connection, add=True)

    def finish(self):
        self.server.endpoint._track(self.connection, add=False)
        super().finish()

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(self.path)
        function = None
        if parsed.path.startswith(INVOKE_PREFIX) and parsed.path.endswith(INVOKE_SUFFIX):
            function = urllib.parse.unquote(parsed.path[len(INVOKE_PREFIX):-len(INVOKE_SUFFIX)])
        mode = self.server.endpoint._take_mode()
        request = Request(
            method="POST",
            raw_path=self.path,
            function=function,
            query=urllib.parse.parse_qs(parsed.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            mode=mode,
        )
        self.server.endpoint._record(request)
        if function is None:
            self._reply(400, _error_body("User", f"unexpected path {self.path}"),
                        {"x-amzn-ErrorType": "InvalidRequestContentException"})
            return
        if mode == "hang":
            self.server.endpoint._hang_release.wait(HANG_LIMIT_SECONDS)
            mode = "ok"
        self._answer(mode, request)

    def _answer(self, mode: str, request: Request):
        if mode == "ok":
            if request.invocation_type == "RequestResponse":
                self._reply(200, b"null", {"Content-Type": "application/json"})
            else:
                self._reply(202, b"")
        elif mode == "function_error":
            self._reply(200, json.dumps({"errorMessage": "boom", "errorType": "Exception"}).encode(),
                        {"X-Amz-Function-Error": "Unhandled"})
        elif mode == "http500":
            self._reply(500, json.dumps({"message": "Internal failure"}).encode(),
                        {"x-amzn-ErrorType": "ServiceException"})
        elif mode == "not_found":
            arn = f"arn:aws:lambda:us-east-1:123456789012:function:{request.function}"
            self._reply(404, _error_body("User", f"Function not found: {arn}"),
                        {"x-amzn-ErrorType": "ResourceNotFoundException"})
        elif mode == "forbidden":
            self._reply(403, json.dumps({"Message": "not authorized to perform lambda:InvokeFunction"}).encode(),
                        {"x-amzn-ErrorType": "AccessDeniedException"})
        else:  # pragma: no cover - set_mode validates
            raise AssertionError(mode)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None):
        try:
            self.send_response(status)
            self.send_header("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) or we were stopped
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, endpoint: "LambdaEndpoint", port: int):
        self.endpoint = endpoint
        super().__init__(("127.0.0.1", port), _Handler)


class LambdaEndpoint:
    """Threaded fake Lambda endpoint; use as a context manager or start()/close()."""

    def __init__(self):
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._mode = "ok"
        self._mode_remaining: int | None = None
        self._hang_release = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> "LambdaEndpoint":
        """Listen (again): on a free port the first time, then on the same port."""
        if self._server is None:
            self._server = _Server(self, self.port)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def stop(self):
        """Stop listening and drop open connections: clients get connection refused."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self._server = self._thread = None
        self.release()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- modes -------------------------------------------------------------
    def set_mode(self, mode: str, count: int | None = None):
        """Answer the next `count` requests (all if None) in `mode`, then "ok"."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            if mode == "hang":
                self._hang_release.clear()
            self._mode, self._mode_remaining = mode, count

    def release(self):
        """Let every hanging request (and future ones) answer "ok"."""
        with self._lock:
            if self._mode == "hang":
                self._mode, self._mode_remaining = "ok", None
        self._hang_release.set()

    def reset(self):
        """Back to a listening endpoint in "ok" mode with no recorded requests."""
        self.release()
        self.start()
        self.set_mode("ok")
        self.clear()

    def clear(self):
        with self._lock:
            self._requests.clear()

    # -- observations -------------------------------------------------------
    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def payloads(self, predicate=lambda payload: True) -> list:
        """Parsed JSON bodies of all recorded Invoke requests matching predicate."""
        return [r.payload for r in self.requests
                if r.function is not None and isinstance(r.payload, dict) and predicate(r.payload)]

    def wait_for(self, predicate, timeout: float = 15.0, count: int = 1) -> list[Request]:
        """Wait until at least `count` recorded requests satisfy predicate(request).

        Returns the matching requests; raises AssertionError after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                matching = [r for r in self._requests if predicate(r)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"endpoint: {len(matching)} of {count} expected requests after {timeout}s; "
                        f"received:\n{self.describe()}")
                self._lock.wait(remaining)

    def wait_for_payload(self, predicate, timeout: float = 15.0) -> Request:
        """The first Invoke request whose JSON payload satisfies predicate(payload)."""
        return self.wait_for(
            lambda r: isinstance(r.payload, dict) and predicate(r.payload), timeout)[0]

    def assert_none_within(self, predicate, seconds: float):
        """Fail as soon as a request matching predicate arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while (remaining := deadline - time.monotonic()) > 0:
                unexpected = [r for r in self._requests if predicate(r)]
                assert not unexpected, f"unexpected requests:\n{self.describe(unexpected)}"
                self._lock.wait(remaining)
            unexpected = [r for r in self._requests if predicate(r)]
            assert not unexpected, f"unexpected requests:\n{self.describe(unexpected)}"

    def describe(self, requests: list[Request] | None = None) -> str:
        """Human-readable dump of requests (default: all recorded)."""
        if requests is None:
            with self._lock:
                requests = list(self._requests)
        lines = [f"  {r.method} {r.raw_path} [{r.invocation_type}] mode={r.mode} "
                 f"body={r.body.decode('utf-8', 'replace')}" for r in requests]
        return "\n".join(lines) or "  (no requests)"

    # -- called by the handler ------------------------------------------------
    def _take_mode(self) -> str:
        with self._lock:
            mode = self._mode
            if self._mode_remaining is not None:
                self._mode_remaining -= 1
                if self._mode_remaining <= 0:
                    self._mode, self._mode_remaining = "ok", None
            return mode

    def _record(self, request: Request):
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _track(self, conn: socket.socket, add: bool):
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


if __name__ == "__main__":  # manual check: python tests/lambda_endpoint.py
    with LambdaEndpoint() as ep:
        print(f"listening on {ep.url}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print(ep.describe())
