"""Overload of a real egress-edge process with proxy.max_connections: M.

Opens M holders (pass-through tunnels to a silent upstream that receives their ClientHello
and never answers, so each holds its connection slot), then K more connections, each sending
a CONNECT, first one at a time, then K at once (64 in flight): every one of those must get
`503` with `x-egress-edge-error: proxy_overloaded`; prints the latency of the refusal
(connect to response head) p50/p99/max for both. Then closes the
holders and measures the time until a new connection gets through again, and checks that M
new connections (a real request each, CONC at a time) all succeed. Any other outcome is a
failure (exit status 1).

usage: overload.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT SILENT_PORT PKI_DIR M K
"""
import asyncio, os, sys, time

import soaklib as S

pid, pport, aport, uport, sport = (int(a) for a in sys.argv[1:6])
pki = sys.argv[6]
M, K = int(sys.argv[7]), int(sys.argv[8])
held = []


HELLO = S.client_hello("up.test")


async def silent(reader, writer):
    """Receives the ClientHello, never answers; closes when the proxy closes its side."""
    held.append(writer)
    try:
        while await reader.read(1 << 16):
            pass
    except OSError:
        pass
    writer.close()


async def holder(sem, failures):
    async with sem:
        try:
            r, w = await S.connect(pport, "up.test", sport)
            w.write(HELLO)
            await w.drain()
            return w
        except S.Fail as e:
            failures[e.kind] = failures.get(e.kind, 0) + 1
            return None


async def excess(sem, lat, outcomes):
    async with sem:
        t0 = time.monotonic()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", pport)
        except OSError as e:
            outcomes["connect_failed"] = outcomes.get("connect_failed", 0) + 1
            return
        try:
            w.write(f"CONNECT up.test:{uport} HTTP/1.1\r\nHost: up.test:{uport}\r\n\r\n".encode())
            status, h = await S.read_head(r, 10)
            lat.append(time.monotonic() - t0)
            kind = S.refusal_kind(status, h)
        except S.Fail as e:
            kind = e.kind
        except OSError as e:
            kind = f"reset ({type(e).__name__})"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        w.close()


async def main():
    S.raise_nofile()
    server = await asyncio.start_server(silent, "127.0.0.1", sport, backlog=4096)
    with S.Upstream(uport, pki):
        ctx = S.client_ctx(os.path.join(pki, "ca.pem"))
        await S.one_get(pport, "up.test", uport, ctx)
        await asyncio.sleep(1)
        base = S.rss_mib(pid)
        sem = asyncio.Semaphore(128)
        failures = {}
        t0 = time.monotonic()
        holders = [w for w in await asyncio.gather(*(holder(sem, failures) for _ in range(M)))
                   if w]
        await asyncio.sleep(0.5)
        active = S.metrics(aport).get("egress_edge_active_tunnels", float("nan"))
        print(f"{len(holders)} of {M} holders open in {time.monotonic() - t0:.1f} s "
              f"({active:.0f} active tunnels), RSS {S.rss_mib(pid):.1f} MiB (idle {base:.1f})"
              + (f"; holder failures: {failures}" if failures else ""))
        # One at a time first (the latency of a refusal), then all K at once (64 in flight).
        one = asyncio.Semaphore(1)
        burst = asyncio.Semaphore(64)
        refused = 0
        for label, sem_k in (("one at a time", one), ("in a burst", burst)):
            lat, outcomes = [], {}
            t0 = time.monotonic()
            await asyncio.gather(*(excess(sem_k, lat, outcomes) for _ in range(K)))
            refused += outcomes.get("503 proxy_overloaded", 0)
            print(f"{K} over the limit, {label}, in {time.monotonic() - t0:.2f} s: "
                  f"{outcomes.get('503 proxy_overloaded', 0)} got 503 proxy_overloaded in "
                  f"{S.ms(S.pct(lat, 50))} (p50), {S.ms(S.pct(lat, 99))} (p99), "
                  f"{S.ms(max(lat, default=float('nan')))} (max); outcomes "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
        # Close the holders, then how long until a new connection is served again.
        t_close = time.monotonic()
        for w in holders:
            w.close()
        recovered, tries = None, 0
        while time.monotonic() - t_close < 30:
            tries += 1
            try:
                await S.one_get(pport, "up.test", uport, ctx)
                recovered = time.monotonic() - t_close
                break
            except S.Fail:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        after = {}
        lat2 = []

        async def fresh():
            async with sem:
                t = time.monotonic()
                try:
                    await S.one_get(pport, "up.test", uport, ctx)
                    lat2.append(time.monotonic() - t)
                    after["ok"] = after.get("ok", 0) + 1
                except S.Fail as e:
                    after[e.kind] = after.get(e.kind, 0) + 1

        await asyncio.gather(*(fresh() for _ in range(M)))
        active = S.metrics(aport).get("egress_edge_active_tunnels", float("nan"))
        print(f"recovery: a new connection served {S.ms(recovered) if recovered is not None else 'NEVER'}"
              f" after the holders closed ({tries} tries); then {M} new connections "
              f"(a request each): " + ", ".join(f"{k}: {v}" for k, v in sorted(after.items()))
              + f"; p50 {S.ms(S.pct(lat2, 50))}; active tunnels after {active:.0f}")
        bad = (sum(failures.values()) + (2 * K - refused) + (M - after.get("ok", 0))
               + (recovered is None))
        print(f"overload: {'ok' if bad == 0 else 'FAILED'}")
    server.close()
    return 0 if bad == 0 else 1


sys.exit(asyncio.run(main()))
