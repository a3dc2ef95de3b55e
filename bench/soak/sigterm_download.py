"""SIGTERM in the middle of large downloads, against a real egress-edge process.

Starts K downloads of MIB MiB each (GET /large, `Connection: close`), alternating between a
pass-through tunnel (up.test) and a bump session (bump.test); each reads its first MiB and
waits. Once all K are under way the proxy gets SIGTERM, and the downloads read on. Every
download must complete with every byte (length and CRC-32 checked), new connections must be
refused once the proxy is draining, and the process must exit within proxy.shutdown_grace
(GRACE_S); its exit status is checked by the shell script. Prints the timings.

usage: sigterm_download.py PROXY_PID PROXY_PORT UPSTREAM_PORT BUMP_CA PKI_DIR K MIB GRACE_S
"""
import asyncio, os, signal, sys, time, zlib

import soaklib as S

pid, pport, uport = (int(a) for a in sys.argv[1:4])
bump_ca, pki = sys.argv[4], sys.argv[5]
K, MIB, GRACE = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
SIZE = MIB << 20
HEAD_START = 1 << 20


async def download(i, ctx, started, go, done):
    host = "up.test" if i % 2 == 0 else "bump.test"
    kind = "tunnel" if i % 2 == 0 else "bump"
    try:
        r, w = await S.connect(pport, host, uport)
        try:
            await S.start_tls(r, w, ctx[kind], host)
            w.write(f"GET /large?bytes={SIZE} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Connection: close\r\n\r\n".encode())
            status, h = await S.read_head(r)
            if status != 200:
                raise S.Fail(S.refusal_kind(status, h))
            first = await r.readexactly(HEAD_START)
            started.append(i)
            await go.wait()
            rest_len, crc = await S.read_body(r, {"content-length": str(SIZE - HEAD_START)},
                                              timeout=GRACE + 10, crc=zlib.crc32(first))
            done.append((kind, time.monotonic(), HEAD_START + rest_len, crc))
        finally:
            w.close()
    except (S.Fail, OSError, asyncio.IncompleteReadError) as e:
        started.append(i)
        done.append((kind, time.monotonic(), -1, repr(e)))


async def main():
    S.raise_nofile()
    want = S.large_crc(SIZE)
    ctx = {"tunnel": S.client_ctx(os.path.join(pki, "ca.pem")), "bump": S.client_ctx(bump_ca)}
    with S.Upstream(uport, pki):
        started, done, go = [], [], asyncio.Event()
        tasks = [asyncio.create_task(download(i, ctx, started, go, done)) for i in range(K)]
        t0 = time.monotonic()
        while len(started) < K and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.02)
        t_sig = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", pport), 2)
            w.close()
            refused = False
        except OSError:
            refused = True
        go.set()
        await asyncio.gather(*tasks)
        t_last = max((d[1] for d in done), default=t_sig)
        while S.alive(pid) and time.monotonic() - t_sig < GRACE + 10:
            await asyncio.sleep(0.02)
        exited = None if S.alive(pid) else time.monotonic() - t_sig
    bad = 0
    for kind in ("tunnel", "bump"):
        mine = [d for d in done if d[0] == kind]
        good = [d for d in mine if d[2] == SIZE and d[3] == want]
        bad += len(mine) - len(good)
        print(f"{kind}: {len(good)} of {len(mine)} downloads of {MIB} MiB complete and intact, "
              f"the last {max((d[1] for d in mine), default=t_sig) - t_sig:.2f} s after SIGTERM"
              + "".join(f"\n  broken: {d[2]} bytes, {d[3]}" for d in mine if d not in good))
    print(f"SIGTERM with {len(started)} downloads at {HEAD_START >> 20} MiB each; "
          f"new connections refused while draining: {'yes' if refused else 'NO'}; "
          f"all done {t_last - t_sig:.2f} s after SIGTERM; process exited "
          f"{f'{exited:.2f} s' if exited is not None else 'NOT (within grace + 10 s)'} after "
          f"SIGTERM (shutdown_grace {GRACE:.0f} s)")
    bad += (not refused) + (exited is None) + (exited is not None and exited > GRACE + 2)
    print(f"downloads: {'ok' if bad == 0 else 'FAILED'}")
    return 0 if bad == 0 else 1


sys.exit(asyncio.run(main()))
