"""Many distinct SNIs through a `*.sni.test` bump rule against a real egress-edge process.

N names s0.sni.test ... s{N-1}.sni.test, one new connection and one GET /small each, CONC at
a time: every name costs the proxy one leaf mint, one cached leaf (the cache holds at most
10,000) and one upstream TLS connection, of which at most POOLED stay open for reuse
(`upstream.max_pooled_total`; the pool's idle timeout is the default 90 s, longer than the
run). Prints the rate, failures, leaf mints, `egress_edge_leaf_cache_entries` and
`egress_edge_upstream_connections` from /metrics, and RSS against the idle baseline of the
same run. Any failure, or more upstream connections open than POOLED + CONC, gives exit
status 1.

usage: many_snis.py PROXY_PID PROXY_PORT ADMIN_PORT UPSTREAM_PORT BUMP_CA PKI_DIR N CONC POOLED
"""
import asyncio, sys, time

import soaklib as S

pid, pport, aport, uport = (int(a) for a in sys.argv[1:5])
bump_ca, pki = sys.argv[5], sys.argv[6]
N, CONC, POOLED = int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])


async def main():
    S.raise_nofile()
    with S.Upstream(uport, pki):
        await asyncio.sleep(2)
        base = S.rss_mib(pid)
        print(f"idle baseline: {base:.1f} MiB")
        ctx = S.client_ctx(bump_ca)
        sem = asyncio.Semaphore(CONC)
        failures, details, done = {}, {}, [0]
        lat = []
        most_upstream = [0.0]
        t0 = time.monotonic()

        async def one(i):
            host = f"s{i}.sni.test"
            async with sem:
                t = time.monotonic()
                try:
                    await S.one_get(pport, host, uport, ctx)
                    lat.append(time.monotonic() - t)
                except S.Fail as e:
                    failures[e.kind] = failures.get(e.kind, 0) + 1
                    details.setdefault(e.kind, f"{host}: {e.detail}")
            done[0] += 1
            if done[0] % 2000 == 0:
                m = S.metrics(aport)
                upstream = m.get("egress_edge_upstream_connections", float("nan"))
                most_upstream[0] = max(most_upstream[0], upstream)
                print(f"  {done[0]} names, {time.monotonic() - t0:.0f} s: "
                      f"{S.rss_mib(pid):.1f} MiB, leaf cache "
                      f"{m.get('egress_edge_leaf_cache_entries', float('nan')):.0f} entries, "
                      f"upstream connections open {upstream:.0f}",
                      flush=True)

        await asyncio.gather(*(one(i) for i in range(N)))
        secs = time.monotonic() - t0
        full = S.rss_mib(pid)
        peak = S.hwm_mib(pid)
        m = S.metrics(aport)
        await asyncio.sleep(1)
        m = S.metrics(aport)
        mints = m.get("egress_edge_leaf_mints_total", float("nan"))
        entries = m.get("egress_edge_leaf_cache_entries", float("nan"))
        misses = m.get("egress_edge_leaf_cache_misses_total", float("nan"))
        mint_s = m.get("egress_edge_leaf_mint_seconds_total", float("nan"))
        mint_fail = m.get("egress_edge_leaf_mint_failures_total", 0)
        upstream = m["egress_edge_upstream_connections"]
        most_upstream[0] = max(most_upstream[0], upstream)
        fails = sum(failures.values())
        print(f"{N} distinct SNIs in {secs:.1f} s ({N / secs:.0f}/s, {CONC} at a time), "
              f"per name p50 {S.ms(S.pct(lat, 50))}, p99 {S.ms(S.pct(lat, 99))}")
        print(f"leaf mints {mints:.0f} (failures {mint_fail:.0f}, "
              f"{mint_s / max(mints, 1) * 1e3:.2f} ms per mint), cache misses {misses:.0f}, "
              f"leaf_cache_entries {entries:.0f}")
        print(f"upstream connections open after the run {upstream:.0f}, at most "
              f"{most_upstream[0]:.0f} at the samples (max_pooled_total {POOLED}, {CONC} in flight)")
        print(f"RSS: idle {base:.1f} MiB, after {full:.1f} MiB ({full / base:.2f}x), "
              f"peak {peak:.1f} MiB ({peak / base:.2f}x)")
        print(f"failures: {fails} of {N}"
              + "".join(f"\n  {k}: {v} (e.g. {details[k]})" for k, v in sorted(failures.items())))
        ok = (fails == 0 and mint_fail == 0 and entries <= 10_000
              and most_upstream[0] <= POOLED + CONC)
        print(f"many-snis: {'ok' if ok else 'FAILED'}")
        return 0 if ok else 1


sys.exit(asyncio.run(main()))
