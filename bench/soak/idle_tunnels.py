"""Idle pass-through tunnels against a real egress-edge process: RSS per wave.

Opens N CONNECT tunnels (each sends a real TLS ClientHello, which the upstream receives and
never answers, so every tunnel stays open and idle), measures the proxy's RSS, closes them,
measures again; WAVES times. Prints MiB and ratios against the idle baseline measured in the
same run. Targets (issue 14): N=10,000 idle tunnels under 100 MiB, and RSS back within 2x the
baseline after they close.

"after close" is measured 2 s after the last tunnel closed; then, with no more traffic, RSS
is read every second until it is back within 2x the baseline (at most IDLE_WAIT = 30 s):
the allocator's background threads return freed pages within its decay time (jemalloc's
dirty and muzzy decay, 10 s each), so the proxy must shrink on its own, not only when the
next request runs the allocator.

With ADMIN_PORT, "after close" is measured once the proxy's egress_edge_active_tunnels is
back to 0 (waited for at most 60 s), so it does not count tunnels still being torn down.

usage: idle_tunnels.py PROXY_PID PROXY_PORT UPSTREAM_PORT [N] [WAVES] [ADMIN_PORT]
"""
import asyncio, sys, time

import soaklib as S

pid, pport, uport = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
N = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
WAVES = int(sys.argv[5]) if len(sys.argv) > 5 else 3
APORT = int(sys.argv[6]) if len(sys.argv) > 6 else None


def active_tunnels():
    return S.metrics(APORT).get("egress_edge_active_tunnels", float("nan"))


async def closed_all():
    """Seconds until the proxy reports no active tunnel (None without ADMIN_PORT)."""
    if APORT is None:
        return None
    t0 = time.monotonic()
    while active_tunnels() != 0 and time.monotonic() - t0 < 60:
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


HELLO = S.client_hello("up.test")
held = []  # upstream-side sockets, kept open and silent


async def upstream(reader, writer):
    held.append(writer)
    try:
        while await reader.read(1 << 16):  # until the proxy closes its side
            pass
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


IDLE_WAIT = 30


async def settle():
    await asyncio.sleep(2)
    return S.rss_mib(pid)


async def main():
    S.raise_nofile()
    server = await asyncio.start_server(upstream, "127.0.0.1", uport, backlog=4096)
    base = await settle()
    print(f"idle baseline: {base:.1f} MiB")
    sem = asyncio.Semaphore(256)
    failed = 0
    for wave in range(1, WAVES + 1):
        t0 = time.monotonic()
        got = await asyncio.gather(*(tunnel(sem) for _ in range(N)), return_exceptions=True)
        writers = [w for w in got if not isinstance(w, BaseException)]
        errors = [e for e in got if isinstance(e, BaseException)]
        failed += len(errors)
        opened = time.monotonic() - t0
        full = await settle()
        for w in writers:
            w.close()
        for w in held:
            w.close()
        held.clear()
        gone = await closed_all()
        after = await settle()
        t_idle = time.monotonic()
        later = after
        while later > 2 * base and time.monotonic() - t_idle < IDLE_WAIT:
            await asyncio.sleep(1)
            later = S.rss_mib(pid)
        waited = time.monotonic() - t_idle
        if errors:
            print(f"wave {wave}: {len(errors)} tunnels failed, e.g. {errors[0]!r}")
        print(
            f"wave {wave}: {len(writers)} idle tunnels opened in {opened:.1f} s: {full:.1f} MiB "
            f"({full / base:.2f}x baseline, {(full - base) * 1024 / N:.1f} KiB per tunnel); "
            f"after close {after:.1f} MiB ({after / base:.2f}x baseline"
            + (f", all closed {gone:.1f} s after the guests closed)" if gone is not None else ")")
            + f", idle {waited + 2:.0f} s after close {later:.1f} MiB ({later / base:.2f}x)"
        )
    server.close()
    print(f"idle-tunnels: {'ok' if failed == 0 else f'FAILED ({failed} tunnels failed)'}")
    return 0 if failed == 0 else 1


sys.exit(asyncio.run(main()))
