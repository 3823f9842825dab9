"""The HTTP front proxy on its own, against a real tiny upstream HTTP server on loopback.

Timeouts, the connection cap, size limits and header hygiene; the full stack (Ray Serve behind the
front, thousands of slow connections) is tests/e2e/test_serve_hardening.py.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from caregpt.serve.front import FrontProxy


async def _chunks(piece: bytes, count: int):
    for _ in range(count):
        yield piece


async def _upstream(name: str = "up", delay_s: float = 0.0) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        body = await reader.readexactly(length)
        seen.append(head + body)
        await asyncio.sleep(delay_s)
        out = b'{"ok": true, "echo": %d, "by": "%s"}' % (len(body), name.encode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: up-1\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(out) + out)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _run(coro):
    return asyncio.run(coro)


def test_normal_requests_pass_and_headers_are_cleaned():
    async def go():
        up, port, seen = await _upstream()
        front = FrontProxy(("127.0.0.1", port), header_timeout_s=1)
        fport = await front.start("127.0.0.1", 0)
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{fport}/v1/x", json={"a": 1}, headers={"x-request-id": "evil<script>" * 30, "x-request-timeout-seconds": "0",
                                                                                     "serve_multiplexed_model_id": "other-adapter"})
            chunked = await client.post(f"http://127.0.0.1:{fport}/v1/x", content=_chunks(b"x" * 100, 3))
        up.close()
        return r, chunked, seen

    r, chunked, seen = _run(go())
    assert r.status_code == 200 and r.json()["ok"] and r.headers.get_list("x-request-id") == ["up-1"]
    assert chunked.json()["echo"] == 300  # chunked bodies are forwarded whole, with a content-length
    assert b"evil" not in seen[0] and b"connection: close" in seen[0] and b"content-length: 300" in seen[1]
    assert b"timeout" not in seen[0] and b"other-adapter" not in seen[0]  # Serve's control headers are the server's


def test_slow_headers_are_closed_and_do_not_block_others():
    async def go():
        up, port, _ = await _upstream()
        front = FrontProxy(("127.0.0.1", port), header_timeout_s=0.5, max_connections=64)
        fport = await front.start("127.0.0.1", 0)
        slow = []
        for _ in range(100):  # more than the cap: the oldest waiting ones are closed to make room
            reader, writer = await asyncio.open_connection("127.0.0.1", fport)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append((reader, writer))
        await asyncio.sleep(0.05)
        assert front.open_connections <= 64
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"http://127.0.0.1:{fport}/health")
        started = time.monotonic()
        replies = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in slow))
        waited = time.monotonic() - started
        up.close()
        return ok, replies, waited, front.open_connections

    ok, replies, waited, still_open = _run(go())
    assert ok.status_code == 200
    assert waited < 2 and still_open == 0  # the server closed every slow connection itself
    timed_out = [r for r in replies if r.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) >= 30 and all(r in (b"",) or r.startswith(b"HTTP/1.1 408") for r in replies)


def test_body_limits_and_slow_bodies():
    async def go():
        up, port, _ = await _upstream()
        front = FrontProxy(("127.0.0.1", port), body_timeout_s=0.5, max_request_bytes=1024)
        fport = await front.start("127.0.0.1", 0)
        async with httpx.AsyncClient() as client:
            declared = await client.post(f"http://127.0.0.1:{fport}/v1/x", content=b"x" * 2000)
            chunked = await client.post(f"http://127.0.0.1:{fport}/v1/x", content=_chunks(b"x" * 600, 3))
        reader, writer = await asyncio.open_connection("127.0.0.1", fport)
        writer.write(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        slow_body = await asyncio.wait_for(reader.read(), 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", fport)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        garbage = await asyncio.wait_for(reader.read(), 5)
        up.close()
        return declared, chunked, slow_body, garbage

    declared, chunked, slow_body, garbage = _run(go())
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413
    assert slow_body.startswith(b"HTTP/1.1 408")
    assert garbage.startswith(b"HTTP/1.1 400")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens here once the socket is closed


def test_direct_ingress_ports_take_requests_least_busy_first_and_serve_proxy_takes_the_rest():
    async def go():
        proxy, proxy_port, proxy_seen = await _upstream("serve-proxy")
        slow, slow_port, _ = await _upstream("replica-a", delay_s=0.5)
        fast, fast_port, _ = await _upstream("replica-b")
        front = FrontProxy(("127.0.0.1", proxy_port))
        fport = await front.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{fport}/v1/x"
        async with httpx.AsyncClient() as client:
            front.set_direct_ports((slow_port, fast_port))
            first = asyncio.ensure_future(client.post(url, json={}))
            await asyncio.sleep(0.2)  # the first request is in flight on replica-a: the next ones go to replica-b
            others = [(await client.post(url, json={})).json()["by"] for _ in range(3)]
            first_by = (await first).json()["by"]
            direct_count = front.forwarded_direct
            gone = _closed_port()
            front.set_direct_ports((gone,))  # a replica that stopped between two polls: its connect is refused
            fallback = (await client.post(url, json={})).json()["by"]
            ports_after = front.direct_ports
        for server in (proxy, slow, fast):
            server.close()
        return first_by, others, direct_count, fallback, ports_after, len(proxy_seen)

    first_by, others, direct_count, fallback, ports_after, proxy_requests = _run(go())
    assert first_by == "replica-a" and others == ["replica-b"] * 3 and direct_count == 4
    assert fallback == "serve-proxy" and proxy_requests == 1  # nothing is lost: Serve's proxy answers it
    assert ports_after == ()  # the refusing port is dropped until the next poll lists it again


def test_local_http_ports_come_from_this_apps_groups_on_this_node_only():
    from types import SimpleNamespace as NS

    from caregpt.serve.ingress import local_http_ports

    def group(app, protocol, *targets):
        return NS(app_name=app, protocol=NS(value=protocol), targets=[NS(ip=ip, port=port) for ip, port in targets])

    groups = [
        group("", "HTTP", ("10.0.0.1", 8000)),  # Serve's proxies (direct ingress off, or no replica running yet)
        group("caregpt", "HTTP", ("10.0.0.1", 30001), ("10.0.0.1", 30000), ("10.0.0.2", 30000)),
        group("caregpt", "gRPC", ("10.0.0.1", 40000)),
        group("other-app", "HTTP", ("10.0.0.1", 30002)),
    ]
    assert local_http_ports(groups, "caregpt", "10.0.0.1") == (30000, 30001)
    assert local_http_ports(groups, "caregpt", "10.0.0.3") == ()  # replicas on other nodes bind their own loopback
    assert local_http_ports(groups[:1], "caregpt", "10.0.0.1") == ()
