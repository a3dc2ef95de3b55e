"""Concurrent bump sessions against a real egress-edge process: RSS, failures, idle cut.

Opens N bump sessions to bump.test (CONNECT, TLS with the proxy's leaf, one keep-alive
GET /small each, then held open and silent), measures the proxy's RSS with all of them open,
then waits for the proxy to close each one at proxy.idle_timeout after its request, and
measures RSS again once they are gone. Prints MiB and ratios against the idle baseline of
the same run. A session that fails, that is cut well before idle_timeout (under 80% of it:
the client's own lag blurs the start) or not within idle_timeout + 5 s, is a failure (exit
status 1).

WAVES times; a later wave whose RSS grows past the first shows what is not given back.

usage: bump_sessions.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT BUMP_CA PKI_DIR N IDLE_S [WAVES]
"""
import asyncio, sys, time

import soaklib as S

pid, pport, aport, uport = (int(a) for a in sys.argv[1:5])
bump_ca, pki = sys.argv[5], sys.argv[6]
N, IDLE = int(sys.argv[7]), float(sys.argv[8])
WAVES = int(sys.argv[9]) if len(sys.argv) > 9 else 1
SLACK = 5.0


async def session(i, ctx, sem, opened, failures, cuts):
    async with sem:
        try:
            r, w = await S.connect(pport, "bump.test", uport)
            await S.start_tls(r, w, ctx, "bump.test")
            status, h, body = await S.request(r, w, "bump.test", "/small", close=False)
            if status != 200 or body != b"hello":
                raise S.Fail(S.refusal_kind(status, h))
        except S.Fail as e:
            failures[e.kind] = failures.get(e.kind, 0) + 1
            return
    t_resp = time.monotonic()
    opened.append(t_resp)
    try:
        extra = await asyncio.wait_for(r.read(1), IDLE + SLACK + 30)
        cuts.append((time.monotonic() - t_resp, extra))
    except (OSError, asyncio.TimeoutError) as e:
        if isinstance(e, TimeoutError):
            cuts.append((None, b""))
        else:
            cuts.append((time.monotonic() - t_resp, b""))
    finally:
        w.close()


async def wave(n, base, ctx):
    """One wave of N sessions; prints its lines, returns how many things went wrong."""
    sem = asyncio.Semaphore(128)
    opened, failures, cuts = [], {}, []
    t0 = time.monotonic()
    tasks = [asyncio.create_task(session(i, ctx, sem, opened, failures, cuts))
             for i in range(N)]
    # Until every session answered (or failed), bounded.
    while len(opened) + sum(failures.values()) < N and time.monotonic() - t0 < 300:
        await asyncio.sleep(0.05)
    open_secs = time.monotonic() - t0
    full = S.rss_mib(pid)
    active = S.metrics(aport).get("egress_edge_active_tunnels", float("nan"))
    print(f"wave {n}: {len(opened)} of {N} bump sessions open in {open_secs:.1f} s "
          f"({len(opened) / open_secs:.0f}/s), {active:.0f} active: {full:.1f} MiB "
          f"({full / base:.2f}x baseline, "
          f"{(full - base) * 1024 / max(1, len(opened)):.1f} KiB per session)")
    if cuts:
        print(f"  note: {len(cuts)} sessions already ended while opening "
              f"(opening took longer than idle_timeout {IDLE:.0f} s?)")
    await asyncio.gather(*tasks)
    await asyncio.sleep(1)
    after = await settle()
    m = S.metrics(aport)
    active = m.get("egress_edge_active_tunnels", float("nan"))
    idle_cuts = S.metric_sum(m, "egress_edge_connections_total", 'outcome="idle_timeout"')
    waits = [c for c, _ in cuts if c is not None]
    never = sum(1 for c, _ in cuts if c is None)
    early = sum(1 for c in waits if c < IDLE * 0.8)  # client-side lag blurs the start
    late = sum(1 for c in waits if c > IDLE + SLACK)
    spoke = sum(1 for _, x in cuts if x)
    print(f"  idle cut: {len(waits)} closed by the proxy {S.pct(waits, 50):.2f} s (p50) / "
          f"{max(waits, default=float('nan')):.2f} s (max) after their request "
          f"(idle_timeout {IDLE:.0f} s); early {early}, later than +{SLACK:.0f} s {late}, "
          f"never {never}, sent bytes before closing {spoke}; "
          f"connections_total{{outcome=\"idle_timeout\"}} so far {idle_cuts:.0f}")
    await asyncio.sleep(13)
    later = S.rss_mib(pid)
    # Freed memory goes back to the OS when the allocator next runs on the proxy's threads:
    # one more (short) bump session, then measure again.
    try:
        await S.one_get(pport, "bump.test", uport, ctx)
    except S.Fail as e:
        failures[e.kind] = failures.get(e.kind, 0) + 1
    nudged = await settle()
    print(f"  RSS after close {after:.1f} MiB ({after / base:.2f}x baseline), 15 s later "
          f"{later:.1f} MiB ({later / base:.2f}x), after one more session {nudged:.1f} MiB "
          f"({nudged / base:.2f}x); active after {active:.0f}")
    fails = sum(failures.values())
    if fails:
        print(f"  failures opening: {fails} ("
              + ", ".join(f"{k}: {v}" for k, v in sorted(failures.items())) + ")")
    return fails + early + late + never + spoke + (0 if active == 0 else 1)


async def main():
    S.raise_nofile()
    with S.Upstream(uport, pki):
        await asyncio.sleep(2)
        base = S.rss_mib(pid)
        print(f"idle baseline: {base:.1f} MiB")
        ctx = S.client_ctx(bump_ca)
        bad = 0
        for n in range(1, WAVES + 1):
            bad += await wave(n, base, ctx)
        peak = S.hwm_mib(pid)
        print(f"peak RSS {peak:.1f} MiB ({peak / base:.2f}x baseline)")
        print(f"bump-sessions: {'ok' if bad == 0 else 'FAILED'}")
        return 0 if bad == 0 else 1


async def settle():
    await asyncio.sleep(2)
    return S.rss_mib(pid)


sys.exit(asyncio.run(main()))
