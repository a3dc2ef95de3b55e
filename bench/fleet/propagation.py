#!/usr/bin/env python3
"""Revocation propagation across a fleet: how long after the control plane's
`POST /v1/handles/revoke` returns does each edge have the new revocation list in force?

For each N in --edges (default 1,3,10): one `egress-edge sds serve` control plane (fresh state
dir, --grant-ttl 5m) and N `egress-edge run` edges (each its own ports, state dir and
`node_id`, `fleet: { source: sds }`, `secrets.sds` pointing at the control plane), all on
127.0.0.1. After every edge is ready (`/readyz` 200), --warmup unmeasured revocations, then R
measured ones, one at a time:

  1. every edge's poller is armed: one thread per edge, each with its own keep-alive
     http.client connection to that edge's admin, GETs /v1/config every --poll-ms (the period
     is measured from one request's start to the next; it cannot be shorter than a round
     trip) and notes, per revocations version, when a response first showed it (the time the
     response was read: an upper bound on when the edge put it in force);
  2. POST /v1/handles/revoke {"id": <random 32 hex>} to the control plane (keep-alive
     connection); t0 = when its 204 has been read;
  3. GET /v1/fleet on the control plane: types.revocations.version is the version expected;
  4. wait until every edge has shown that version (at most --timeout s; a miss is counted and
     reported), disarm the pollers, pause a random 20-100 ms.

Latency of (revocation, edge) = first response showing the version - t0, so it includes up
to one poll period plus one /v1/config round trip of measurement error; both are printed
(idle round trip measured before the run, and the round trip and period the pollers actually
got while all N polled at once). A version already shown before t0 (the edge applied it
before the client read the POST's answer) counts as 0 and is reported; a second table times
the same events from when the POST was sent instead (an upper bound that includes the POST).

Printed per N: p50 / p90 / max over all (revocation, edge) latencies ("per edge"), and over
the per-revocation max across edges ("all N edges": the time until the whole fleet refuses
the handle); ratios against N=1 from the same run. Nothing is asserted. Every process started
is killed on exit, Ctrl-C and SIGTERM included (and, on Linux, when this script dies: the
children have PR_SET_PDEATHSIG).

usage: propagation.py [--bin PATH] [--edges 1,3,10] [-R 50] [--warmup 2] [--poll-ms 2]
                      [--timeout 10] [--max-secs 600] [--keep]
"""
import argparse
import ctypes
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pdeathsig():
    """In the child, before exec: SIGKILL when the parent dies (Linux; best effort)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Conn:
    """One keep-alive HTTP/1.1 connection to an admin listener, reopened after an error."""

    def __init__(self, port, timeout=5.0):
        self.port, self.timeout, self.c = port, timeout, None

    def request(self, method, path, body=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.c.request(method, path, body=body, headers=headers)
                r = self.c.getresponse()
                data = r.read()
                if r.will_close:
                    self.close()
                return r.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


class Procs:
    """Every process started; all killed by `stop_all`."""

    def __init__(self):
        self.all = []

    def start(self, args, log):
        f = open(log, "wb")
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=_pdeathsig)
        f.close()
        self.all.append(p)
        return p

    def stop_all(self):
        for p in self.all:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for p in self.all:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.all = []


def wait_ready(port, path, limit, proc, what, log):
    c = Conn(port, timeout=1.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            break
        try:
            st, _ = c.request("GET", path)
            if st == 200:
                c.close()
                return
        except OSError:
            pass
        time.sleep(0.05)
    c.close()
    tail = open(log, errors="replace").read()[-2000:]
    raise RuntimeError(f"{what} not ready within {limit} s (exit {proc.poll()}):\n{tail}")


def revocations_version(body):
    v = json.loads(body)
    return v["fleet"]["state"]["types"]["revocations"]["version"]


class Poller(threading.Thread):
    """Polls one edge's /v1/config while armed; records when each version was first shown.

    All pollers share one Condition (`cv`) with the main thread, which waits on it."""

    def __init__(self, name, port, period, stop, cv):
        super().__init__(name=name, daemon=True)
        self.port, self.period, self.stop, self.cv = port, period, stop, cv
        self.conn = Conn(port)
        self.armed = False
        self.want = None
        self.seen = {}        # version -> perf_counter when a response first showed it
        self.rtts = []        # round trips while armed (s)
        self.periods = []     # start-to-start intervals while armed (s)
        self.errors = 0
        self.first_error = None

    # The three below are called with `cv` held.
    def arm(self):
        self.armed, self.want = True, None

    def expect(self, version):
        self.want = version
        if version in self.seen:
            self.armed = False

    def done(self):
        return self.want is not None and self.want in self.seen

    def run(self):
        last_start = None
        while not self.stop.is_set():
            with self.cv:
                if not self.armed:
                    last_start = None
                    self.cv.wait(0.2)
                    continue
            t_send = time.perf_counter()
            if last_start is not None:
                self.periods.append(t_send - last_start)
            last_start = t_send
            try:
                st, body = self.conn.request("GET", "/v1/config")
                t_recv = time.perf_counter()
                if st != 200:
                    raise RuntimeError(f"/v1/config: status {st}")
                v = revocations_version(body)
            except Exception as e:  # counted and shown; the poller goes on
                self.errors += 1
                self.first_error = self.first_error or repr(e)
                time.sleep(0.01)
                continue
            with self.cv:
                self.rtts.append(t_recv - t_send)
                if v not in self.seen:
                    self.seen[v] = t_recv
                if self.want is not None and v == self.want:
                    self.armed = False
                    self.cv.notify_all()
            pause = self.period - (time.perf_counter() - t_send)
            if pause > 0:
                time.sleep(pause)


def pct(xs, p):
    """Nearest-rank percentile of a list (None when empty)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))]


def ms(x):
    return "-" if x is None else f"{x * 1e3:.1f}"


def fstype(path):
    """The filesystem type `path` is on (from /proc/mounts), or "?"."""
    best, kind = "", "?"
    try:
        for line in open("/proc/mounts"):
            f = line.split()
            mnt = f[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, f[2]
    except OSError:
        pass
    return kind


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def edge_config(i, proxy, admin, state, sds):
    return f"""proxy: {{ listen: '{HOST}:{proxy}', shutdown_grace: 1s }}
admin: {{ listen: '{HOST}:{admin}' }}
log: {{ level: warn }}
state_dir: '{state}'
network: {{ allow: [127.0.0.1/32] }}
secrets:
  sds: {{ target: 'http://{HOST}:{sds}', node_id: bench-edge-{i}, initial_fetch_timeout: 10s }}
fleet: {{ source: sds }}
default_rung: deny
"""


FLEET_FILE = """profiles:
  agents:
    destinations:
      - { host: other.test, ports: [443], rung: bump, methods: [GET] }
"""


def run_fleet(args, n, scratch, procs, deadline):
    """Starts a control plane and n edges, runs the revocations; returns the figures."""
    d = os.path.join(scratch, f"n{n}")
    os.makedirs(d)
    secrets = os.path.join(d, "secrets.yaml")
    with open(secrets, "w") as f:
        f.write("secrets: {}\n")
    os.chmod(secrets, 0o600)
    fleet = os.path.join(d, "fleet.yaml")
    with open(fleet, "w") as f:
        f.write(FLEET_FILE)
    sds, cp_admin = free_port(), free_port()
    cp_log = os.path.join(d, "control.log")
    cp = procs.start([args.bin, "sds", "serve", "--listen", f"{HOST}:{sds}", "--secrets", secrets,
                      "--fleet", fleet, "--admin", f"{HOST}:{cp_admin}",
                      "--state-dir", os.path.join(d, "control"), "--grant-ttl", "5m"], cp_log)
    wait_ready(cp_admin, "/healthz", 20, cp, "control plane", cp_log)
    edges = []
    for i in range(n):
        proxy, admin = free_port(), free_port()
        state = os.path.join(d, f"edge-{i}")
        cfg = os.path.join(d, f"edge-{i}.yaml")
        with open(cfg, "w") as f:
            f.write(edge_config(i, proxy, admin, state, sds))
        log = os.path.join(d, f"edge-{i}.log")
        edges.append((admin, procs.start([args.bin, "run", "--config", cfg], log), log))
    t_start = time.monotonic()
    for i, (admin, p, log) in enumerate(edges):
        wait_ready(admin, "/readyz", 60, p, f"edge {i}", log)
    started = time.monotonic() - t_start

    # Idle round trip of one /v1/config (edge 0, nothing else polling): the resolution floor.
    c = Conn(edges[0][0])
    c.request("GET", "/v1/config")
    idle = []
    for _ in range(200):
        t = time.perf_counter()
        st, body = c.request("GET", "/v1/config")
        idle.append(time.perf_counter() - t)
    config_bytes = len(body)
    c.close()

    stop = threading.Event()
    cv = threading.Condition()
    pollers = [Poller(f"poll-{i}", admin, args.poll_ms / 1e3, stop, cv)
               for i, (admin, _, _) in enumerate(edges)]
    for p in pollers:
        p.start()
    cpc = Conn(cp_admin)
    rng = random.SystemRandom()
    per_edge, all_edges, post_rtts = [], [], []
    sent_edge, sent_all = [], []  # the same, timed from when the POST was sent
    early = missed = 0
    try:
        for k in range(args.warmup + args.revocations):
            if time.monotonic() > deadline:
                raise TimeoutError(f"--max-secs reached during N={n} (revocation {k})")
            measured = k >= args.warmup
            with cv:
                for p in pollers:
                    p.arm()
                cv.notify_all()
            hid = "%032x" % rng.getrandbits(128)
            t_post = time.perf_counter()
            st, out = cpc.request("POST", "/v1/handles/revoke", json.dumps({"id": hid}))
            t0 = time.perf_counter()
            if st != 204:
                raise RuntimeError(f"POST /v1/handles/revoke: {st} {out[:300]!r}")
            st, out = cpc.request("GET", "/v1/fleet")
            if st != 200:
                raise RuntimeError(f"GET /v1/fleet: {st} {out[:300]!r}")
            want = json.loads(out)["types"]["revocations"]["version"]
            with cv:
                for p in pollers:
                    p.expect(want)
                cv.wait_for(lambda: all(p.done() for p in pollers), args.timeout)
                for p in pollers:
                    p.armed = False
            if measured:
                post_rtts.append(t0 - t_post)
                lats, sents = [], []
                for p in pollers:
                    seen = p.seen.get(want)
                    if seen is None:
                        missed += 1
                        continue
                    lat = seen - t0
                    if lat < 0:
                        early += 1
                        lat = 0.0
                    lats.append(lat)
                    sents.append(seen - t_post)
                per_edge.extend(lats)
                sent_edge.extend(sents)
                if len(lats) == n:
                    all_edges.append(max(lats))
                    sent_all.append(max(sents))
            time.sleep(rng.uniform(0.02, 0.1))
    finally:
        stop.set()
        cpc.close()
    rtts = [x for p in pollers for x in p.rtts]
    periods = [x for p in pollers for x in p.periods]
    errors = sum(p.errors for p in pollers)
    first_error = next((p.first_error for p in pollers if p.first_error), None)
    return {
        "n": n, "started": started, "idle": idle, "config_bytes": config_bytes,
        "per_edge": per_edge, "all": all_edges, "post": post_rtts, "rtts": rtts,
        "sent_edge": sent_edge, "sent_all": sent_all,
        "periods": periods, "early": early, "missed": missed, "errors": errors,
        "first_error": first_error,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target-bench")
    ap.add_argument("--bin", default=os.path.join(target, "release", "egress-edge"))
    ap.add_argument("--edges", default="1,3,10", help="comma-separated fleet sizes (1-32)")
    ap.add_argument("-R", "--revocations", type=int, default=50, help="measured, per N (1-1000)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured revocations first, per N")
    ap.add_argument("--poll-ms", type=float, default=2.0, help="poll period per edge (>= 0.5)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per revocation, seconds")
    ap.add_argument("--max-secs", type=float, default=600.0, help="whole run, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.edges.split(",") if x.strip()]
    if not sizes or any(not 1 <= s <= 32 for s in sizes):
        ap.error("--edges: sizes between 1 and 32")
    if not 1 <= args.revocations <= 1000 or not 0 <= args.warmup <= 100:
        ap.error("-R in [1, 1000], --warmup in [0, 100]")
    if args.poll_ms < 0.5 or not 0 < args.timeout <= 60 or not 0 < args.max_secs <= 3600:
        ap.error("--poll-ms >= 0.5, --timeout in (0, 60], --max-secs in (0, 3600]")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"propagation: no egress-edge binary at {args.bin}: build it first "
                 "(bench/fleet/run.sh does: cargo build --release -p egress-edge)")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    # Also when started with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, on_term)

    scratch = tempfile.mkdtemp(prefix="egress-fleet-prop-")
    procs = Procs()
    began = time.monotonic()
    deadline = began + args.max_secs
    print(f"fleet propagation: {args.revocations} revocations per fleet size (+{args.warmup} "
          f"unmeasured), random 32-hex ids, one at a time, 20-100 ms random pause; every edge's "
          f"/v1/config polled every {args.poll_ms:g} ms on a keep-alive connection (one thread "
          f"each); state dirs in {scratch} ({fstype(os.path.realpath(scratch))}); "
          f"{os.cpu_count()} CPUs, load average {loadavg()}; binary {args.bin}", flush=True)
    results = []
    status = 0
    try:
        for n in sizes:
            print(f"propagation: N={n}: starting a control plane and {n} edge(s)", file=sys.stderr,
                  flush=True)
            try:
                results.append(run_fleet(args, n, scratch, procs, deadline))
            finally:
                procs.stop_all()
    except KeyboardInterrupt:
        print("propagation: interrupted; all processes stopped", file=sys.stderr)
        status = 130
    except Exception as e:
        print(f"propagation: FAILED: {e}", file=sys.stderr)
        status = 1
    finally:
        procs.stop_all()
        if args.keep:
            print(f"propagation: scratch dir kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if not results:
        return status

    for title, one, every in (
            ("latency from the control plane's POST /v1/handles/revoke returning until the "
             "edge's /v1/config shows the new revocations version, ms", "per_edge", "all"),
            ("the same from the moment the POST was sent (includes the POST round trip), ms",
             "sent_edge", "sent_all")):
        print()
        print(title)
        print(f"  {'N':>3}  {'samples':>7}  {'per edge p50':>12} {'p90':>7} {'max':>7}   "
              f"{'all N p50':>9} {'p90':>7} {'max':>7}   {'all N p50 vs N=1':>16}")
        base = pct(results[0][every], 50)
        for r in results:
            a50 = pct(r[every], 50)
            ratio = "baseline" if r is results[0] else (
                f"{a50 / base:.2f}x N={results[0]['n']}" if a50 and base else "-")
            print(f"  {r['n']:>3}  {len(r[one]):>7}  {ms(pct(r[one], 50)):>12} "
                  f"{ms(pct(r[one], 90)):>7} {ms(max(r[one], default=None)):>7}   "
                  f"{ms(pct(r[every], 50)):>9} {ms(pct(r[every], 90)):>7} "
                  f"{ms(max(r[every], default=None)):>7}   {ratio:>16}")
    print()
    print("measurement resolution (a latency is overstated by up to one poll period plus one "
          "round trip), ms")
    print(f"  {'N':>3}  {'/v1/config rtt idle p50':>23} {'p90':>6}   {'polling all N: rtt p50':>22} "
          f"{'p90':>6}  {'period p50':>10} {'p90':>6}   {'POST revoke p50':>15}  {'edges ready':>11}")
    for r in results:
        print(f"  {r['n']:>3}  {ms(pct(r['idle'], 50)):>23} {ms(pct(r['idle'], 90)):>6}   "
              f"{ms(pct(r['rtts'], 50)):>22} {ms(pct(r['rtts'], 90)):>6}  "
              f"{ms(pct(r['periods'], 50)):>10} {ms(pct(r['periods'], 90)):>6}   "
              f"{ms(pct(r['post'], 50)):>15}  {r['started']:>9.1f} s")
    print()
    notes = []
    for r in results:
        if r["early"] or r["missed"] or r["errors"]:
            notes.append(f"  N={r['n']}: {r['early']} shown before the POST returned (counted 0), "
                         f"{r['missed']} not shown within {args.timeout:g} s, {r['errors']} poll "
                         f"errors{' (first: ' + r['first_error'] + ')' if r['first_error'] else ''}")
    for line in notes:
        print(line)
    print(f"/v1/config is {results[0]['config_bytes']} bytes here; total "
          f"{time.monotonic() - began:.0f} s; load average now {loadavg()}")
    if any(r["missed"] or r["errors"] for r in results):
        status = status or 1
    print("propagation: done" if status == 0 else
          "propagation: interrupted" if status == 130 else f"propagation: FAILED (status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
