"""Idle pass-through tunnels against a real egress-edge process: RSS per wave.

Opens N CONNECT tunnels (each sends a real TLS ClientHello, which the upstream receives and
never answers, so every tunnel stays open and idle), measures the proxy's RSS, closes them,
measures again; WAVES times. Prints MiB and ratios against the idle baseline measured in the
same run. Targets (issue 14): N=10,000 idle tunnels under 100 MiB, and RSS back within 2x the
baseline after they close.

usage: idle_tunnels.py PROXY_PID PROXY_PORT UPSTREAM_PORT [N] [WAVES]
"""
import asyncio, os, resource, ssl, sys, time

pid, pport, uport = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
N = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
WAVES = int(sys.argv[5]) if len(sys.argv) > 5 else 3


def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def client_hello():
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="up.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


HELLO = client_hello()
held = []  # upstream-side sockets, kept open and silent


async def upstream(reader, writer):
    held.append(writer)
    try:
        await reader.read(1 << 16)
        await asyncio.sleep(3600)
    except Exception:
        pass


async def tunnel(sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", pport)
        w.write(f"CONNECT up.test:{uport} HTTP/1.1\r\nHost: up.test:{uport}\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:80])
        w.write(HELLO)
        await w.drain()
        return w


async def settle():
    await asyncio.sleep(2)
    return rss_mib()


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(upstream, "127.0.0.1", uport, backlog=4096)
    base = await settle()
    print(f"idle baseline: {base:.1f} MiB")
    sem = asyncio.Semaphore(256)
    for wave in range(1, WAVES + 1):
        t0 = time.monotonic()
        writers = await asyncio.gather(*(tunnel(sem) for _ in range(N)))
        opened = time.monotonic() - t0
        full = await settle()
        for w in writers:
            w.close()
        for w in held:
            w.close()
        held.clear()
        await asyncio.sleep(1)
        after = await settle()
        print(
            f"wave {wave}: {N} idle tunnels opened in {opened:.1f} s: {full:.1f} MiB "
            f"({full / base:.2f}x baseline, {(full - base) * 1024 / N:.1f} KiB per tunnel); "
            f"after close {after:.1f} MiB ({after / base:.2f}x baseline)"
        )
    server.close()


asyncio.run(main())
