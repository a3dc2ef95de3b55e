#!/usr/bin/env python3
"""Where the CPU goes per unit of work, per process, for the compare.sh rows, and what that
means for the ratio to the direct connection on this machine.

usage: cpu_budget.py EGRESS_EDGE_BIN [--secs S] [--downloads N] [--rows ka,nc,dl,dl1]

Runs against the nginx upstream of ../shared/bench-peers (setup-upstream.sh; upstream.test:8443
in /etc/hosts), starts two egress-edge processes of its own (passthrough on 127.0.0.1:3160,
bump on 127.0.0.1:3161, configured as compare.sh does) and measures, for direct, tunnel and
bump:

- ka:  oha -c 16 keep-alive GET /small for S seconds        (unit: request)
- nc:  oha -c 16 --disable-keepalive, same                    (unit: request = new CONNECT + TLS)
- dl:  curl GET /large (64 MiB), HTTP/2 to the upstream/bump, N times (unit: 64 MiB)
- dl1: the same with --http1.1

and, in the ka row, `socat` as a plain TCP relay in front of the upstream (127.0.0.1:3199, a
process per connection, read/write): what any user-space relay costs in the kernel, the floor
under the tunnel.

For each it prints the rate, and the CPU time per unit of the client (oha/curl, from wait4),
the upstream (nginx worker, /proc/PID/task/*/schedstat, in ns) and the proxy (utime + stime of
/proc/PID/stat, which keeps the time of threads that exit, in clock ticks), the cores
kept busy, and the CPU-bound ceiling: with ncpu cores and every process's per-unit CPU as
measured, no scheduling can do better than ncpu / (sum of per-unit CPU). Direct is at or near
its ceiling here (both cores busy), so a proxy row's ceiling as a ratio to direct's measured
rate is the best ratio this machine allows for the proxy's measured CPU per unit; the last column
is the proxy CPU per unit that the row's target ratio leaves room for, with the client and the
upstream costing what they cost direct (the most favourable assumption for the proxy).
Loopback only."""
import json, os, re, signal, subprocess, sys, tempfile, time

W = os.environ.get("BENCH_WORK", "/tmp/egress-bench")
URL = "https://upstream.test:8443"
NCPU = os.cpu_count() or 1
TARGETS = {"ka": {"tunnel": 0.9, "bump": 0.65}, "nc": {"bump": 0.8}, "dl": {"bump": 0.8}, "dl1": {"bump": 0.8}}

def task_cpu_ns(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total

def nginx_workers():
    with open(f"{W}/nginx/nginx.pid") as f:
        master = int(f.read().strip())
    kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [int(k) for k in kids]

def run_child(argv):
    """Runs argv; returns (stdout, cpu seconds of the child from wait4)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {p.returncode}")
    return out, ru.ru_utime + ru.ru_stime

def stat_cpu_s(pid, children):
    """utime + stime of a process, exited threads included, and with `children` those of its
    reaped children too (clock ticks, so coarse)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")

def proxy_cpu_s(proxy):
    if proxy is None:
        return 0.0
    kind, pid = proxy
    return stat_cpu_s(pid, kind == "children")

def measure(fn, proxy):
    ng = nginx_workers()
    ng0 = sum(task_cpu_ns(p) for p in ng)
    px0 = proxy_cpu_s(proxy)
    t0 = time.monotonic()
    units, client_cpu = fn()
    wall = time.monotonic() - t0
    if proxy is not None and proxy[0] == "children":
        time.sleep(1)  # let the relay's per-connection children exit and be reaped
    ngc = (sum(task_cpu_ns(p) for p in ng) - ng0) / 1e9
    pxc = proxy_cpu_s(proxy) - px0
    return {"units": units, "wall": wall, "client": client_cpu, "upstream": ngc, "proxy": pxc}

def oha(secs, proxy_args, keepalive, url=URL):
    def fn():
        argv = ["oha", "-z", f"{secs}s", "-c", "16", "--insecure", "--no-tui", "--output-format", "json"]
        if not keepalive:
            argv.append("--disable-keepalive")
        out, cpu = run_child(argv + proxy_args + [f"{url}/small"])
        d = json.loads(out)
        ok = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if k == "200")
        return ok, cpu
    return fn

def curl(n, proxy_args, extra):
    def fn():
        cpu = 0.0
        for _ in range(n):
            out, c = run_child(["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"] + extra + proxy_args + [f"{URL}/large"])
            code, size = out.decode().split()
            if code != "200" or int(size) != 64 * 1024 * 1024:
                raise RuntimeError(f"download: {code} {size} bytes")
            cpu += c
        return n, cpu
    return fn

def start_edges(binary, tmp, pids):
    """Starts the passthrough and bump edges into `pids` (so a caller stops them even when
    one fails to start)."""
    for mode, port, admin in (("passthrough", 3160, 3170), ("bump", 3161, 3171)):
        cfg = os.path.join(tmp, f"{mode}.yaml")
        with open(cfg, "w") as f:
            f.write(f"""proxy: {{ listen: 127.0.0.1:{port} }}
admin: {{ listen: 127.0.0.1:{admin} }}
state_dir: {tmp}/state-{mode}
upstream: {{ extra_roots: [{W}/pki/upstream-ca.pem] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test, ports: [8443], rung: {mode} }}
default_rung: deny
""")
        log = open(os.path.join(tmp, f"{mode}.log"), "w")
        pids[mode] = subprocess.Popen([binary, "run", "--config", cfg], stdout=log, stderr=log)
    time.sleep(2)
    for p in pids.values():
        if p.poll() is not None:
            raise RuntimeError(f"egress-edge exited; see {tmp}")

def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    binary, secs, downloads, rows = args[0], 5, 10, ["ka", "nc", "dl", "dl1"]
    i = 1
    while i < len(args):
        if args[i] == "--secs": secs = float(args[i + 1]); i += 2
        elif args[i] == "--downloads": downloads = int(args[i + 1]); i += 2
        elif args[i] == "--rows": rows = args[i + 1].split(","); i += 2
        else: sys.exit(f"unknown argument {args[i]}")
    tmp = tempfile.mkdtemp(prefix="cpu-budget-")
    procs = {}
    try:
        run(binary, tmp, procs, secs, downloads, rows)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(timeout=10)

def run(binary, tmp, procs, secs, downloads, rows):
    """Starts the edges and the relay (recorded in `procs`, which the caller stops) and
    prints every row."""
    start_edges(binary, tmp, procs)
    relay = subprocess.Popen(["socat", "TCP-LISTEN:3199,bind=127.0.0.1,fork,reuseaddr,nodelay",
                              "TCP:127.0.0.1:8443,nodelay"], stderr=subprocess.DEVNULL)
    procs["socat"] = relay
    targets = [("direct", [], None), ("tunnel", ["-x", "http://127.0.0.1:3160"], ("threads", procs["passthrough"].pid)),
               ("bump", ["-x", "http://127.0.0.1:3161"], ("threads", procs["bump"].pid)),
               ("socat", [], ("children", relay.pid))]
    with open("/proc/loadavg") as f:
        print(f"cpu budget: {NCPU} cores, load {f.read().split()[0]} at start, {binary}")
    hdr = f"{'row':<5} {'target':<7} {'rate':>12} {'client':>9} {'upstream':>9} {'proxy':>9} {'sum':>9} {'busy':>5} {'ceiling':>8} {'x direct':>8} {'ceil/dir':>8} {'proxy budget':>12}"
    for row in rows:
        unit = {"ka": "req", "nc": "req", "dl": "64MiB", "dl1": "64MiB"}[row]
        scale, uname = (1e6, "µs") if unit == "req" else (1e3, "ms")
        print(f"\n{row}: CPU per {unit} in {uname}; rate in {unit}/s")
        print(hdr)
        direct = None
        for name, pargs, pid in targets:
            # A tunnel carries --http1.1 exactly as it carries HTTP/2 (it never sees the
            # protocol), and socat forks a process per connection, so it is a floor for
            # keep-alive only.
            if (row == "dl1" and name == "tunnel") or (row != "ka" and name == "socat"):
                continue
            url = "https://upstream.test:3199" if name == "socat" else URL
            fn = {"ka": lambda: oha(secs, pargs, True, url), "nc": lambda: oha(secs, pargs, False),
                  "dl": lambda: curl(downloads, pargs, []), "dl1": lambda: curl(downloads, pargs, ["--http1.1"])}[row]()
            m = measure(fn, pid)
            u = max(m["units"], 1)
            per = {k: m[k] / u for k in ("client", "upstream", "proxy")}
            total = sum(per.values())
            rate = u / m["wall"]
            busy = total * rate
            ceiling = NCPU / total
            if direct is None:
                direct = rate
                dpair = per["client"] + per["upstream"]
            t = TARGETS.get(row, {}).get(name)
            room = ""
            if t:
                need = NCPU / (t * direct) - dpair
                room = f"{need * scale:.1f}" if need > 0 else "none"
            print(f"{row:<5} {name:<7} {rate:>12.1f} {per['client']*scale:>9.1f} {per['upstream']*scale:>9.1f} {per['proxy']*scale:>9.1f} {total*scale:>9.1f} {busy:>5.2f} {ceiling:>8.1f} {rate/direct:>8.2f} {ceiling/direct:>8.2f} {room:>12}")

if __name__ == "__main__":
    main()
