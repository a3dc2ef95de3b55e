"""The upstream killed under load, through a real egress-edge process.

Three kinds of clients run continuously, WORKERS each: `tunnel` (a new pass-through tunnel
to up.test per request), `bump` (a new bump session to bump.test per request) and
`bump-keepalive` (bump sessions of 20 keep-alive requests). After 2 s the upstream process is
killed (SIGKILL) for OUTAGE_S seconds, then started again on the same port. While it is down
every request must fail cleanly: `502` with `x-egress-edge-error: upstream_connect` (for a
tunnel, the answer to the CONNECT; for bump, the answer to the request inside the session).
Prints, per kind: requests, clean refusals, other failures (requests in flight at the kill
counted apart: those are cut by the upstream's death itself), and the time from the restart
(once it accepts again) to the first success and to the last failure. A failure that is neither clean nor in flight
at the kill, or no recovery within 30 s, gives exit status 1.

usage: upstream_kill.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT BUMP_CA PKI_DIR OUTAGE_S WORKERS
"""
import asyncio, os, sys, time

import soaklib as S

pid, pport, aport, uport = (int(a) for a in sys.argv[1:5])
bump_ca, pki = sys.argv[5], sys.argv[6]
OUTAGE, WORKERS = float(sys.argv[7]), int(sys.argv[8])
CLEAN = "502 upstream_connect"


async def main():
    S.raise_nofile()
    up_ctx = S.client_ctx(os.path.join(pki, "ca.pem"))
    bump_ctx = S.client_ctx(bump_ca)
    upstream = S.Upstream(uport, pki).start()
    try:
        loads = [
            S.Load("tunnel", lambda: S.one_get(pport, "up.test", uport, up_ctx), WORKERS,
                   max_secs=OUTAGE + 60),
            S.Load("bump", lambda: S.one_get(pport, "bump.test", uport, bump_ctx), WORKERS,
                   max_secs=OUTAGE + 60),
        ]
        sessions = [S.Session(pport, "bump.test", uport, bump_ctx) for _ in range(WORKERS)]
        loads.append(S.Load("bump-keepalive", [s.get for s in sessions], WORKERS,
                            max_secs=OUTAGE + 60))
        t_start = time.monotonic()
        for load in loads:
            load.start()
        await asyncio.sleep(2)
        upstream.kill()  # SIGKILL, and waits until it is gone
        t_kill = time.monotonic()
        await asyncio.sleep(OUTAGE)
        await upstream.restart()  # returns once it accepts again: recovery counts from there
        t_restart = time.monotonic()
        # Until every kind has succeeded again (bounded), then 2 s more.
        t_wait = time.monotonic()
        while (any(load.first_ok_after(t_restart) is None for load in loads)
               and time.monotonic() - t_wait < 30):
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        for load in loads:
            await load.stop()
        for s in sessions:
            await s.drop()
    finally:
        upstream.kill()
    print(f"upstream killed at +{t_kill - t_start:.1f} s, accepting again {t_restart - t_kill:.1f} s "
          f"later (restarted after {OUTAGE:.0f} s)")
    bad = 0
    for load in loads:
        before = load.counts(0, t_kill)
        down = {}
        in_flight = {}
        for end, kind, start in load.results:
            if kind == "ok" or end < t_kill:
                continue
            if start < t_kill and kind != CLEAN:
                in_flight[kind] = in_flight.get(kind, 0) + 1
            else:
                down[kind] = down.get(kind, 0) + 1
        ok_total = sum(1 for _, k, _ in load.results if k == "ok")
        clean = down.pop(CLEAN, 0)
        unclean = sum(down.values())
        first = load.first_ok_after(t_restart)
        last = load.last_fail()
        bad += unclean + (first is None) + sum(v for k, v in before.items() if k != "ok")
        print(f"{load.name}: {len(load.results)} requests, {ok_total} ok; "
              f"{clean} clean refusals ({CLEAN}); {unclean} other failures"
              + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(down.items()))})" if down else "")
              + f"; in flight at the kill and cut: {sum(in_flight.values())}"
              + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(in_flight.items()))})"
                 if in_flight else "")
              + f"; first success {f'{first - t_restart:.2f} s' if first else 'NEVER'} after the "
                f"restart, last failure {f'{last - t_restart:+.2f} s' if last else 'none'}")
        for k, d in load.details.items():
            if k != CLEAN:
                print(f"  {k}: {d}")
    if os.environ.get("SOAK_DEBUG"):
        for load in loads:
            for end, kind, start in sorted(load.results, key=lambda x: x[2]):
                if t_kill - 0.5 < end and start < t_restart + 0.5:
                    print(f"  {load.name} {start - t_restart:+.2f} .. {end - t_restart:+.2f} {kind}")
    print(f"upstream-kill: {'ok' if bad == 0 else 'FAILED'}")
    return 0 if bad == 0 else 1


sys.exit(asyncio.run(main()))
