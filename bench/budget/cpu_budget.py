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

For each it prints the rate, and the CPU time per unit of the client (oha/curl, from wait4),
the upstream (nginx worker) and the proxy (every thread, /proc/PID/task/*/schedstat), the cores
kept busy, and the CPU-bound ceiling: with ncpu cores and every process's per-unit CPU as
measured, no scheduling can do better than ncpu / (sum of per-unit CPU). Direct is at or near
its ceiling here (both cores busy), so a proxy row's ceiling as a ratio to direct's measured
rate is the best ratio this machine allows for the proxy's measured CPU per unit; the last column
is the proxy CPU per unit that the row's target ratio would leave room for. Loopback only."""
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

def measure(fn, proxy_pid):
    ng = nginx_workers()
    ng0 = sum(task_cpu_ns(p) for p in ng)
    px0 = task_cpu_ns(proxy_pid) if proxy_pid else 0
    t0 = time.monotonic()
    units, client_cpu = fn()
    wall = time.monotonic() - t0
    ngc = (sum(task_cpu_ns(p) for p in ng) - ng0) / 1e9
    pxc = (task_cpu_ns(proxy_pid) - px0) / 1e9 if proxy_pid else 0.0
    return {"units": units, "wall": wall, "client": client_cpu, "upstream": ngc, "proxy": pxc}

def oha(secs, proxy_args, keepalive):
    def fn():
        argv = ["oha", "-z", f"{secs}s", "-c", "16", "--insecure", "--no-tui", "--output-format", "json"]
        if not keepalive:
            argv.append("--disable-keepalive")
        out, cpu = run_child(argv + proxy_args + [f"{URL}/small"])
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

def start_edges(binary, tmp):
    pids = {}
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
    return pids

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
    edges = start_edges(binary, tmp)
    targets = [("direct", [], None), ("tunnel", ["-x", "http://127.0.0.1:3160"], edges["passthrough"].pid),
               ("bump", ["-x", "http://127.0.0.1:3161"], edges["bump"].pid)]
    try:
        with open("/proc/loadavg") as f:
            print(f"cpu budget: {NCPU} cores, load {f.read().split()[0]} at start, {binary}")
        hdr = f"{'row':<5} {'target':<7} {'rate':>12} {'client':>9} {'upstream':>9} {'proxy':>9} {'sum':>9} {'busy':>5} {'ceiling':>8} {'x direct':>8} {'ceil/dir':>8} {'proxy for target':>16}"
        for row in rows:
            unit = {"ka": "req", "nc": "req", "dl": "64MiB", "dl1": "64MiB"}[row]
            scale, uname = (1e6, "µs") if unit == "req" else (1e3, "ms")
            print(f"\n{row}: CPU per {unit} in {uname}; rate in {unit}/s")
            print(hdr)
            direct = None
            for name, pargs, pid in targets:
                if row == "dl1" and name == "tunnel":
                    continue
                fn = {"ka": lambda: oha(secs, pargs, True), "nc": lambda: oha(secs, pargs, False),
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
                    need = NCPU / (t * direct) - per["client"] - per["upstream"]
                    room = f"{need * scale:.1f}" if need > 0 else "none"
                print(f"{row:<5} {name:<7} {rate:>12.1f} {per['client']*scale:>9.1f} {per['upstream']*scale:>9.1f} {per['proxy']*scale:>9.1f} {total*scale:>9.1f} {busy:>5.2f} {ceiling:>8.1f} {rate/direct:>8.2f} {ceiling/direct:>8.2f} {room:>16}")
    finally:
        for p in edges.values():
            p.send_signal(signal.SIGTERM)
        for p in edges.values():
            p.wait(timeout=10)

if __name__ == "__main__":
    main()
