"""The HTTP front: a small proxy before Ray Serve's proxy that times out slow clients.

Ray Serve's HTTP proxy (uvicorn) has an idle timeout between requests but none for a request whose
headers never finish: 20,000 connections that each send half a request line hold the proxy until
no normal request gets through. The front listens on the public host:port, Serve's proxy on
127.0.0.1 behind it, and for every connection it:

- closes it (408) if the request line and headers have not arrived within ``header_timeout_s``
  (a quarter of that while more than half of ``max_connections`` are waiting for headers: a flood),
  and answers 431 for a head over ``max_header_bytes``. One sweeper task per second does this for
  all connections, oldest first, rather than a timer per connection;
- reads the whole body (Content-Length or chunked) within ``body_timeout_s``, 413 above
  ``max_request_bytes`` (a cheap refusal before the body reaches Python on the router);
- keeps at most ``max_connections`` open: at the cap, the connection that has waited longest for
  its headers is closed (a slow client cannot keep a normal one out);
- forwards the request with ``Connection: close`` and a Content-Length, then copies the response
  back byte for byte (SSE streams flow through unbuffered) and closes the connection;
- drops a client's ``x-request-id`` unless it is a short safe token (Serve logs it as the id), and
  the headers Serve obeys (``serve_multiplexed_model_id``: the router alone chooses adapters;
  ``x-request-timeout-seconds``: 0 would turn Serve's request timeout off);
- sends the request to a local ingress replica directly when Serve's direct ingress gives it ports
  (:mod:`caregpt.serve.ingress`: the one with the fewest requests in flight from here; ~10 ms less
  per request), else, or when that replica does not answer the connect, to Serve's proxy.

It is started by ``caregpt serve`` (in-process), and as ``python -m caregpt.serve.front`` by the
Docker image and the KubeRay sidecar. SIGTERM stops accepting, lets forwarded requests finish,
then exits (:meth:`FrontProxy.drain`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import re
import resource
import signal
import threading
import time

import h11
from pydantic import Field

from caregpt.config.fields import Spec
from caregpt.config.pick import pick
from caregpt.config.verb import verb_main
from caregpt.serve.config import ServeConfig

logger = logging.getLogger("caregpt.serve.front")

_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"content-length", b"expect"}
_SAFE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
# Ray Serve reads these from requests: which adapter replica serves it (the router alone chooses adapters) and a
# per-request timeout, where 0 turns Serve's request timeout off
_SERVE_CONTROL = {b"serve_multiplexed_model_id", b"serve-multiplexed-model-id", b"x-request-timeout-seconds"}

# the limits `caregpt serve` passes on are declared once, in ServeConfig: names, defaults, checks and help text
FRONT_KEYS = ("header_timeout_s", "body_timeout_s", "max_connections", "max_request_bytes")
_DEFAULT = {k: ServeConfig.model_fields[k].default for k in (*FRONT_KEYS, "request_timeout_s")}
RESPONSE_GRACE_S = 60  # an upstream response may stay silent this much longer than the router's own request timeout


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (every held connection is a file); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _error(status: int, reason: str, message: str, code: str) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body


class _Refused(Exception):
    def __init__(self, response: bytes):
        self.response = response


class FrontProxy:
    def __init__(self, upstream: tuple[str, int], *, header_timeout_s: float = _DEFAULT["header_timeout_s"], body_timeout_s: float = _DEFAULT["body_timeout_s"],
                 response_timeout_s: float = _DEFAULT["request_timeout_s"] + RESPONSE_GRACE_S, max_connections: int = _DEFAULT["max_connections"],
                 max_request_bytes: int = _DEFAULT["max_request_bytes"], max_header_bytes: int = 32768):
        self.upstream = upstream
        self.header_timeout_s, self.body_timeout_s, self.response_timeout_s = header_timeout_s, body_timeout_s, response_timeout_s
        self.max_connections, self.max_request_bytes, self.max_header_bytes = max_connections, max_request_bytes, max_header_bytes
        self._ids = itertools.count()
        self._open: dict[int, asyncio.StreamWriter] = {}
        # connections still sending their request head, oldest first: id -> (writer, accepted at)
        self._awaiting_head: collections.OrderedDict[int, tuple[asyncio.StreamWriter, float]] = collections.OrderedDict()
        self.forwarding = 0  # requests sent upstream whose response has not ended
        self.direct_ports: tuple[int, ...] = ()  # local ingress replicas' HTTP ports (set from another thread)
        self._in_flight: collections.Counter[int] = collections.Counter()  # direct requests per port
        self.forwarded_direct = 0  # requests that went to a replica directly, not through Serve's proxy
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Future | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); returns the port."""
        raise_open_files_limit()
        self._server = await asyncio.start_server(self._serve, host, port, backlog=4096, limit=65536)
        self._sweeper = asyncio.ensure_future(self._sweep())
        return self._server.sockets[0].getsockname()[1]

    def head_timeout_s(self) -> float:
        flood = len(self._awaiting_head) > self.max_connections // 2
        return self.header_timeout_s / 4 if flood else self.header_timeout_s

    async def _sweep(self) -> None:
        """Close connections whose head is late (408), oldest first; the rest are younger, so the scan stops early."""
        late = _error(408, "Request Timeout", "The request headers did not arrive in time.", "request_timeout")
        while True:
            await asyncio.sleep(min(1.0, self.header_timeout_s / 4))
            cutoff = time.monotonic() - self.head_timeout_s()
            while self._awaiting_head:
                cid, (writer, accepted) = next(iter(self._awaiting_head.items()))
                if accepted > cutoff:
                    break
                del self._awaiting_head[cid]
                writer.write(late)
                writer.transport.abort() if writer.transport.get_write_buffer_size() else writer.close()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = next(self._ids)
        self._open[cid] = writer
        self._awaiting_head[cid] = (writer, time.monotonic())
        try:
            if len(self._open) > self.max_connections:  # at the cap: the oldest connection still without headers goes
                if len(self._awaiting_head) <= 1:  # only this one: every other connection is a request in progress
                    raise _Refused(_error(503, "Service Unavailable", f"The server holds {self.max_connections} connections (max_connections); retry shortly.", "too_many_connections"))
                _, (victim, _) = self._awaiting_head.popitem(last=False)
                victim.transport.abort()
            request, body = await self._read_request(reader, writer, cid)
            self._awaiting_head.pop(cid, None)
            await self._forward(request, body, reader, writer)
        except _Refused as refused:
            writer.write(refused.response)
        except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError, OSError):
            pass
        finally:
            self._awaiting_head.pop(cid, None)
            self._open.pop(cid, None)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cid: int) -> tuple[h11.Request, bytes]:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        request = None
        body = bytearray()
        body_by = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    raise _Refused(_error(431, "Request Header Fields Too Large", f"The request head is over {self.max_header_bytes} bytes.", "headers_too_large")) from None
                raise _Refused(_error(400, "Bad Request", "The request is not valid HTTP/1.1.", "invalid_http")) from None
            if event is h11.NEED_DATA:
                if request is None:  # the sweeper closes this connection if its head is late
                    data = await reader.read(65536)
                else:
                    try:
                        data = await asyncio.wait_for(reader.read(65536), max(body_by - time.monotonic(), 0.001))
                    except TimeoutError:
                        raise _Refused(_error(408, "Request Timeout", "The request body did not arrive in time.", "request_timeout")) from None
                conn.receive_data(data)
                if not data and request is None:
                    raise ConnectionError("closed before the headers")
                continue
            if isinstance(event, h11.Request):
                request = event
                self._awaiting_head.pop(cid, None)
                body_by = time.monotonic() + self.body_timeout_s
                declared = dict(event.headers).get(b"content-length")
                if declared is not None and int(declared) > self.max_request_bytes:
                    raise _Refused(_too_large(self.max_request_bytes))
                if conn.they_are_waiting_for_100_continue:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_request_bytes:
                    raise _Refused(_too_large(self.max_request_bytes))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed mid-request")

    def _upstream_head(self, request: h11.Request, body: bytes, peer: str) -> bytes:
        lines = [request.method + b" " + request.target + b" HTTP/1.1"]
        for name, value in request.headers:
            if name in _HOP_BY_HOP or name in _SERVE_CONTROL or (name == b"x-request-id" and not _SAFE_ID.fullmatch(value)):
                continue
            lines.append(name + b": " + value)
        lines += [b"content-length: " + str(len(body)).encode(), b"connection: close", b"x-forwarded-for: " + peer.encode()]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def set_direct_ports(self, ports: tuple[int, ...]) -> None:
        """The local ingress replicas to forward to directly (() = Serve's proxy only); safe from any thread."""
        self.direct_ports = tuple(ports)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int | None]:
        """A connection to the least busy local ingress replica, else to Serve's proxy; (reader, writer, direct port)."""
        ports = self.direct_ports
        if ports:
            port = min(ports, key=lambda p: self._in_flight[p])
            try:  # a replica that is stopping refuses at once; a wedged one gets 2 s before Serve's proxy takes over
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
                return reader, writer, port
            except (OSError, TimeoutError):
                self.direct_ports = tuple(p for p in ports if p != port) if self.direct_ports == ports else self.direct_ports
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 10)
        except (OSError, TimeoutError):
            raise _Refused(_error(503, "Service Unavailable", "The API server is not reachable; retry shortly.", "upstream_unavailable")) from None
        return reader, writer, None

    async def _forward(self, request: h11.Request, body: bytes, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        peer = (client.get_extra_info("peername") or ("unknown",))[0]
        up_reader, up_writer, direct = await self._connect()
        if direct is not None:
            self._in_flight[direct] += 1
            self.forwarded_direct += 1
        self.forwarding += 1
        # a client that hangs up ends the upstream request too (the router then cancels the generation)
        gone = asyncio.ensure_future(client_reader.read(1))
        try:
            up_writer.write(self._upstream_head(request, body, str(peer)) + body)
            while True:
                read = asyncio.ensure_future(up_reader.read(65536))
                done, _ = await asyncio.wait({read, gone}, timeout=self.response_timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if gone in done and read not in done and gone.result():
                    gone = asyncio.get_running_loop().create_future()  # pipelined bytes, not a hang-up: ignored
                    done, _ = await asyncio.wait({read}, timeout=self.response_timeout_s)
                if read not in done:
                    read.cancel()
                    return
                data = read.result()
                if not data:
                    return
                client.write(data)
                await client.drain()
        finally:
            self.forwarding -= 1
            if direct is not None:
                self._in_flight[direct] -= 1
            gone.cancel()
            up_writer.transport.abort()

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, close connections still sending headers, wait for forwarded requests; True if all finished."""
        if self._server is not None:
            self._server.close()
        for writer, _ in list(self._awaiting_head.values()):
            writer.transport.abort()
        deadline = time.monotonic() + timeout_s
        while self.forwarding and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._sweeper is not None:
            self._sweeper.cancel()
        return self.forwarding == 0


def _too_large(limit: int) -> bytes:
    return _error(413, "Payload Too Large", f"The request body is larger than {limit} bytes (max_request_bytes); shorten the messages.", "request_too_large")


def options_from_config(config: ServeConfig) -> dict:
    """FrontProxy keyword arguments from a ServeConfig."""
    return {**{k: getattr(config, k) for k in FRONT_KEYS}, "response_timeout_s": config.request_timeout_s + RESPONSE_GRACE_S}


class FrontThread:
    """A FrontProxy on its own event loop thread (how `caregpt serve` runs it beside the Ray driver)."""

    def __init__(self, proxy: FrontProxy, host: str, port: int):
        self.proxy = proxy
        try:
            import uvloop

            self._loop = uvloop.new_event_loop()
        except ImportError:
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="caregpt-front", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(proxy.start(host, port), self._loop).result(timeout=30)

    def drain(self, timeout_s: float) -> bool:
        finished = asyncio.run_coroutine_threadsafe(self.proxy.drain(timeout_s), self._loop).result(timeout=timeout_s + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        return finished


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


class _FrontOnlyArgs(Spec):
    listen: str
    """HOST:PORT clients connect to (e.g. 0.0.0.0:8000)."""

    upstream: str
    """HOST:PORT of Ray Serve's HTTP proxy (e.g. 127.0.0.1:8001)."""

    response_timeout_s: float = Field(default=_DEFAULT["request_timeout_s"] + RESPONSE_GRACE_S, gt=0)
    """Give up on an upstream response silent this long (caregpt serve: request_timeout_s + 60)."""

    drain_timeout_s: float = Field(default=25.0, ge=0)
    """On SIGTERM, how long forwarded requests may finish."""

    direct_app: str | None = None
    """Serve application whose ingress replicas on this node get requests directly (Ray Serve direct ingress,
    ~10 ms less per request), Serve's proxy (--upstream) taking the rest. Joins the Ray cluster at RAY_ADDRESS
    (else the one running here) to ask the Serve controller for their ports; the cluster needs
    RAY_SERVE_ENABLE_DIRECT_INGRESS=1, and without it every request goes through --upstream."""


FrontArgs = pick(ServeConfig, FRONT_KEYS, "FrontArgs", base=_FrontOnlyArgs)


FRONT_USAGE = "python -m caregpt.serve.front --listen HOST:PORT --upstream HOST:PORT [--key value ...]"


def parse_args(argv: list[str]) -> FrontArgs:
    from caregpt.config.loader import load_verb

    return load_verb(argv, {"front": FrontArgs}, verb="serve", config_file=False)[0]["front"]


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(FRONT_USAGE, "caregpt's HTTP front proxy: header/body timeouts and a connection cap before Ray Serve's proxy.",
                       [("Front proxy", FrontArgs)])


@verb_main("front", help_text)
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    proxy = FrontProxy(_address(args.upstream), response_timeout_s=args.response_timeout_s, **{k: getattr(args, k) for k in FRONT_KEYS})
    if args.direct_app:
        import os

        import ray

        from caregpt.serve.ingress import IngressTargets

        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False, configure_logging=False)
        IngressTargets(args.direct_app, proxy.set_direct_ports).start()

    async def run() -> None:
        host, port = _address(args.listen)
        bound = await proxy.start(host, port)
        print(f"caregpt front listening on {host}:{bound} -> {args.upstream}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("caregpt front draining...", flush=True)
        await proxy.drain(args.drain_timeout_s)

    try:  # uvloop (a Ray dependency) accepts and closes connections several times faster
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
