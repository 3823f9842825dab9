"""A slow-header client, run as a process: open COUNT connections that never finish their headers.

    python -m tests.e2e.slow_headers HOST PORT COUNT WAIT_S

Each connection sends ``POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\n`` and never the blank
line. Prints one JSON line when all are open ({"opened", "failed"}), then waits up to WAIT_S for the
server to close them and prints {"closed", "still_open", "last_close_s"} (seconds after the last
connection opened).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"


async def main(host: str, port: int, count: int, wait_s: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # every connection is a file
    conns = []
    failed = 0
    for i in range(count):
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(HEAD)
            conns.append((reader, writer))
        except OSError:
            failed += 1
        if i % 200 == 0:
            await asyncio.sleep(0)
    opened_at = time.monotonic()
    print(json.dumps({"opened": len(conns), "failed": failed}), flush=True)
    closes: list[float] = []

    async def until_closed(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(4096):
                pass
        except OSError:
            pass
        closes.append(time.monotonic() - opened_at)

    tasks = [asyncio.ensure_future(until_closed(r)) for r, _ in conns]
    await asyncio.wait(tasks, timeout=wait_s) if tasks else None
    print(json.dumps({"closed": len(closes), "still_open": len(conns) - len(closes), "last_close_s": max(closes, default=0.0)}), flush=True)
    for _, writer in conns:
        writer.transport.abort()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
