"""The SDS server killed under load: a real egress-edge process takes the credential of a
bump destination (api.test) from `egress-edge sds serve`; WORKERS clients send requests
with a handle continuously (bump sessions of 20 keep-alive requests each), the upstream
answers 200 only when the proxy put the real secret on the request. After 2 s the SDS server
is killed (SIGKILL) for OUTAGE_S seconds, then started again on the same address. Prints
requests and failures before / during / after the outage (expected: 0 failures: the warm
secret keeps being used), how long the proxy took to notice (egress_edge_sds_stream_connected
0) and to reconnect after the restart (back to 1). Any failure, or no reconnect within 60 s,
gives exit status 1.

usage: sds_kill.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT BUMP_CA PKI_DIR SECRET
                   SDS_PID BIN SDS_PORT SECRETS_FILE OUTAGE_S WORKERS
"""
import asyncio, os, signal, subprocess, sys, time

import soaklib as S

pid, pport, aport, uport = (int(a) for a in sys.argv[1:5])
bump_ca, pki, secret = sys.argv[5:8]
sds_pid, binary, sds_port, secrets = int(sys.argv[8]), sys.argv[9], int(sys.argv[10]), sys.argv[11]
OUTAGE, WORKERS = float(sys.argv[12]), int(sys.argv[13])


def connected():
    return S.metrics(aport).get("egress_edge_sds_stream_connected", float("nan"))


async def wait_for(value, secs):
    """Seconds until egress_edge_sds_stream_connected == value (polled every 50 ms)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < secs:
        if connected() == value:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return None


async def main():
    S.raise_nofile()
    import json
    handle = json.loads(S.admin_post(aport, "/v1/handles",
                                     '{"credentials":["api-key"],"ttl":"30m"}'))["handle"]
    auth = (("Authorization", f"Bearer {handle}"),)
    ctx = S.client_ctx(bump_ca)
    restarted = None
    with S.Upstream(uport, pki, secret):
        sessions = [S.Session(pport, "api.test", uport, ctx, "/auth", auth)
                    for _ in range(WORKERS)]
        load = S.Load("sds", [sess.get for sess in sessions], WORKERS, max_secs=OUTAGE + 90)
        t_start = time.monotonic()
        load.start()
        try:
            print(f"sds stream connected: {connected():.0f}", flush=True)
            await asyncio.sleep(2)
            t_kill = time.monotonic()
            os.kill(sds_pid, signal.SIGKILL)
            noticed = await wait_for(0, OUTAGE)
            await asyncio.sleep(max(0, OUTAGE - (time.monotonic() - t_kill)))
            t_restart = time.monotonic()
            restarted = subprocess.Popen(
                [binary, "sds", "serve", "--listen", f"127.0.0.1:{sds_port}", "--secrets", secrets],
                stderr=open(os.path.join(os.path.dirname(secrets), "sds2.log"), "w"))
            reconnect = await wait_for(1, 60)
            await asyncio.sleep(3)
        finally:
            await load.stop()
            for sess in sessions:
                await sess.drop()
            if restarted:
                restarted.terminate()
                restarted.wait()
        m = S.metrics(aport)
        for label, a, b in (("before the kill", t_start, t_kill),
                            (f"SDS down ({t_restart - t_kill:.1f} s)", t_kill, t_restart),
                            ("after the restart", t_restart, float("inf"))):
            ok, failed, kinds = load.summary(a, b)
            print(f"{label}: {ok} requests ok, {failed} failed ({kinds})")
        ok, failed, kinds = load.summary()
        for k, d in load.details.items():
            print(f"  {k}: {d}")
        print(f"all: {ok + failed} requests with a handle, {failed} failed; "
              f"p50 {S.ms(S.pct(load.latencies, 50))}, p99 {S.ms(S.pct(load.latencies, 99))}")
        print(f"sds_stream_connected went to 0 "
              f"{S.ms(noticed) if noticed is not None else 'never (within the outage)'} after the kill; "
              f"back to 1 {f'{reconnect:.2f} s' if reconnect is not None else 'NEVER (60 s)'} "
              f"after the restart; sds_reconnects_total "
              f"{m.get('egress_edge_sds_reconnects_total', float('nan')):.0f}, secrets_warm "
              f"{m.get('egress_edge_secrets_warm', float('nan')):.0f}")
        good = failed == 0 and reconnect is not None and ok > 0
        print(f"sds-kill: {'ok' if good else 'FAILED'}")
        return 0 if good else 1


sys.exit(asyncio.run(main()))
