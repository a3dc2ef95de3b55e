"""Slowloris against a real egress-edge process, with a normal client working meanwhile.

N connections each send the start of a CONNECT head at once, then one more header byte
every second, never finishing it. The proxy must cut every one at proxy.header_read_timeout,
while a normal client (one tunnel worker to up.test and one bump worker to bump.test, a new
connection and one GET /small per request) keeps working: its failures must be 0. A slow
connection that is never cut, cut well before the timeout (under 80% of it: the client's own
lag blurs the start) or answered with anything is a failure too (exit status 1). The cut is
timed from the connection's open: the proxy's timer starts when it begins reading the head,
at accept, not at the first byte (a connection that sends its first byte late is cut as
early).

usage: slowloris.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT BUMP_CA PKI_DIR N TIMEOUT_S
"""
import asyncio, os, sys, time

import soaklib as S

pid, pport, aport, uport = (int(a) for a in sys.argv[1:5])
bump_ca, pki = sys.argv[5], sys.argv[6]
N, TIMEOUT = int(sys.argv[7]), float(sys.argv[8])
SLACK = 5.0
TRICKLE = b"Host: up.test:443\r\nUser-Agent: " + b"s" * 400


async def slow(sem, opened, cuts):
    async with sem:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", pport)
        except OSError as e:
            cuts.append(("open_failed", repr(e)))
            return
        t0 = time.monotonic()  # the clock runs from the accept (see below), not the first byte
        w.write(b"CONNECT up.test:443 HTTP/1.1\r\n")
        opened.append(t0)
    got = b""
    try:
        async def trickle():
            try:
                for b in TRICKLE[: int(TIMEOUT + SLACK + 30)]:  # bounded: one byte a second
                    await asyncio.sleep(1)
                    w.write(bytes([b]))
                    await w.drain()
            except OSError:
                pass

        feeder = asyncio.create_task(trickle())
        try:
            got = await asyncio.wait_for(r.read(4096), TIMEOUT + SLACK + 30)
        finally:
            feeder.cancel()
        cuts.append(("closed", time.monotonic() - t0, got))
    except (OSError, asyncio.TimeoutError) as e:
        if isinstance(e, TimeoutError):
            cuts.append(("never", None, got))
        else:
            cuts.append(("closed", time.monotonic() - t0, got))
    finally:
        w.close()


async def main():
    S.raise_nofile()
    with S.Upstream(uport, pki):
        await asyncio.sleep(1)
        base = S.rss_mib(pid)
        up_ctx = S.client_ctx(os.path.join(pki, "ca.pem"))
        bump_ctx = S.client_ctx(bump_ca)
        tunnel = S.Load("tunnel", lambda: S.one_get(pport, "up.test", uport, up_ctx), 1)
        bump = S.Load("bump", lambda: S.one_get(pport, "bump.test", uport, bump_ctx), 1)
        tunnel.start()
        bump.start()
        sem = asyncio.Semaphore(256)
        opened, cuts = [], []
        t0 = time.monotonic()
        tasks = [asyncio.create_task(slow(sem, opened, cuts)) for _ in range(N)]
        while len(opened) + len(cuts) < N and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.05)
        t_open = time.monotonic() - t0
        await asyncio.sleep(min(TIMEOUT / 2, 2))
        during = S.rss_mib(pid)
        await asyncio.gather(*tasks)
        t_cut = time.monotonic()
        await asyncio.sleep(1)
        await tunnel.stop()
        await bump.stop()
        m = S.metrics(aport)
        counted = S.metric_sum(m, "egress_edge_connections_total", 'outcome="header_timeout"')
        closed = [c[1] for c in cuts if c[0] == "closed"]
        never = sum(1 for c in cuts if c[0] == "never")
        open_failed = [c for c in cuts if c[0] == "open_failed"]
        early = sum(1 for c in closed if c < TIMEOUT * 0.8)  # client-side lag blurs the start
        late = sum(1 for c in closed if c > TIMEOUT + SLACK)
        answered = [c[2] for c in cuts if c[0] == "closed" and c[2]]
        print(f"{len(opened)} slow connections opened in {t_open:.1f} s; RSS {during:.1f} MiB "
              f"with them open (idle {base:.1f} MiB, {during / base:.2f}x, "
              f"{(during - base) * 1024 / max(1, len(opened)):.1f} KiB per connection)")
        print(f"cut: {len(closed)} closed by the proxy {S.pct(closed, 50):.2f} s (p50) / "
              f"{max(closed, default=float('nan')):.2f} s (max) after they opened "
              f"(header_read_timeout {TIMEOUT:.0f} s); early {early}, later than "
              f"+{SLACK:.0f} s {late}, never {never}, open failed {len(open_failed)}, answered "
              f"with bytes {len(answered)}{' e.g. ' + repr(answered[0][:80]) if answered else ''}; "
              f"connections_total{{outcome=\"header_timeout\"}} {counted:.0f}")
        bad = early + late + never + len(open_failed)
        for load in (tunnel, bump):
            ok, failed, kinds = load.summary()
            bad += failed
            print(f"normal client ({load.name}, a new connection per request) during the attack: "
                  f"{ok} ok, {failed} failed ({kinds}); p50 {S.ms(S.pct(load.latencies, 50))}, "
                  f"p99 {S.ms(S.pct(load.latencies, 99))}")
            for k, d in load.details.items():
                print(f"  {k}: {d}")
        print(f"slowloris: {'ok' if bad == 0 else 'FAILED'}")
        return 0 if bad == 0 else 1


sys.exit(asyncio.run(main()))
