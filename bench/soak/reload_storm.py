"""A reload storm under load, against a real egress-edge process.

Rewrites the config file RELOADS times, every INTERVAL seconds, alternating between two valid
configs A and B (they differ in `other.test`: deny in A, passthrough in B, and in
proxy.idle_timeout), each time written to a temporary file and renamed over the config (so
the proxy never reads half a file) and followed by SIGHUP (the file is also polled every
second; a change seen by the poll before the SIGHUP is reloaded twice). Meanwhile WORKERS
tunnel clients (up.test) and WORKERS bump clients (bump.test, a new session per request)
run continuously. Prints requests and failures (expected 0),
egress_edge_config_reloads_total by result, and whether the last config is the one in force.
Any failed request or failed reload gives exit status 1.

usage: reload_storm.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT BUMP_CA PKI_DIR CONFIG
                       CONFIG_A CONFIG_B RELOADS INTERVAL_S WORKERS
"""
import asyncio, os, signal, sys, time

import soaklib as S

pid, pport, aport, uport = (int(a) for a in sys.argv[1:5])
bump_ca, pki, config, config_a, config_b = sys.argv[5:10]
RELOADS, INTERVAL, WORKERS = int(sys.argv[10]), float(sys.argv[11]), int(sys.argv[12])


async def other_status():
    try:
        _, w = await S.connect(pport, "other.test", uport)
        w.close()
        return 200
    except S.Fail as e:
        return e.kind


async def main():
    S.raise_nofile()
    texts = [open(config_a).read(), open(config_b).read()]
    up_ctx = S.client_ctx(os.path.join(pki, "ca.pem"))
    bump_ctx = S.client_ctx(bump_ca)
    with S.Upstream(uport, pki):
        before = S.metrics(aport)
        loads = [
            S.Load("tunnel", lambda: S.one_get(pport, "up.test", uport, up_ctx), WORKERS,
                   max_secs=RELOADS * INTERVAL + 60),
            S.Load("bump", lambda: S.one_get(pport, "bump.test", uport, bump_ctx), WORKERS,
                   max_secs=RELOADS * INTERVAL + 60),
        ]
        for load in loads:
            load.start()
        await asyncio.sleep(1)
        t0 = time.monotonic()
        tmp = config + ".tmp"
        for i in range(RELOADS):
            with open(tmp, "w") as f:
                f.write(texts[(i + 1) % 2])
            os.replace(tmp, config)
            os.kill(pid, signal.SIGHUP)
            await asyncio.sleep(max(0, t0 + (i + 1) * INTERVAL - time.monotonic()))
        storm = time.monotonic() - t0
        await asyncio.sleep(1.5)
        for load in loads:
            await load.stop()
        m = S.metrics(aport)
        last = "B" if RELOADS % 2 else "A"
        status = await other_status()
    ok_reloads = (m.get('egress_edge_config_reloads_total{result="ok"}', 0)
                  - before.get('egress_edge_config_reloads_total{result="ok"}', 0))
    failed_reloads = (m.get('egress_edge_config_reloads_total{result="failed"}', 0)
                      - before.get('egress_edge_config_reloads_total{result="failed"}', 0))
    print(f"{RELOADS} rewrites + SIGHUP in {storm:.1f} s: config_reloads_total ok {ok_reloads:.0f}, "
          f"failed {failed_reloads:.0f}")
    bad = 0
    for load in loads:
        ok, failed, kinds = load.summary()
        bad += failed
        print(f"{load.name} (a new connection per request): {ok} ok, {failed} failed ({kinds}); "
              f"p50 {S.ms(S.pct(load.latencies, 50))}, p99 {S.ms(S.pct(load.latencies, 99))}")
        for k, d in load.details.items():
            print(f"  {k}: {d}")
    want = 200 if last == "B" else "403 destination_denied"
    print(f"last config written: {last}; other.test now answers {status} (want {want})")
    bad += (failed_reloads > 0) + (ok_reloads < RELOADS) + (status != want)
    print(f"reload-storm: {'ok' if bad == 0 else 'FAILED'}")
    return 0 if bad == 0 else 1


sys.exit(asyncio.run(main()))
