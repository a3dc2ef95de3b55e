#!/usr/bin/env python3
"""Sums a `perf record` profile of the egress-edge process into cost categories (TLS crypto,
TLS state machine, HTTP/2, HTTP/1 glue, logging, allocation, runtime, copies, own code,
kernel copy / scheduling / TCP / syscall). Usage: categorize.py PERF_DATA. Each sample is
counted once, in the first category whose pattern matches its symbol (a flat profile: no call
graphs, which release builds without frame pointers do not give reliably)."""
import re, subprocess, sys
data = sys.argv[1]
out = subprocess.run(["perf","report","-i",data,"--no-children","--sort","dso,symbol","--stdio"],capture_output=True,text=True).stdout
cats = [
 ("TLS crypto (ring AES-GCM, ChaCha, SHA, ECDHE/ECDSA)", r"ring|aes_gcm|gcm_|chacha|sha256|sha512|p256|p384|ecp_nistz|x25519|bn_mul|ecdsa|LIMBS|fiat_"),
 ("TLS state machine (rustls, tokio-rustls)", r"rustls"),
 ("HTTP/2 framing + HPACK (h2)", r"\bh2::"),
 ("HTTP/1 + client/server glue (hyper, hyper-util, http)", r"hyper|\bhttp::|httparse"),
 ("logging/formatting (tracing, fmt)", r"tracing|core::fmt|nu_ansi|write_str|DefaultVisitor|fmt::"),
 ("allocation (jemalloc)", r"_rjem|jemalloc"),
 ("runtime (tokio, futures, wakers)", r"tokio|futures|waker|Waker|mio"),
 ("userspace copies (memmove/memcpy/memset)", r"memmove|memcpy|memset"),
 ("bytes/buffers", r"bytes::"),
 ("egress-edge own code (policy, handles, metrics, context)", r"egress_|prometheus|policy|moka|arc_swap"),
 ("kernel: copy to/from sockets", r"\[k\] _copy_(to|from)_iter|copy_user"),
 ("kernel: scheduling and wakeups", r"\[k\] (finish_task_switch|schedule|futex|try_to_wake|__schedule|irqentry|exit_to_user)"),
 ("kernel: TCP/IP, softirq, locks", r"\[k\] .*(tcp|ip_|skb|softirq|dev_queue|spin|net_|sock|lock)"),
 ("kernel: syscall entry, other", r"\[k\]"),
 ("libc other", r"libc"),
]
tot = {c:0.0 for c,_ in cats}; other=0.0
for line in out.splitlines():
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+(\[.\])\s+(.*)", line)
    if not m: continue
    pct=float(m.group(1)); s=m.group(2)+" "+m.group(3)+" "+m.group(4)
    for c,rx in cats:
        if re.search(rx, s):
            tot[c]+=pct; break
    else: other+=pct
for c,_ in cats:
    if tot[c]>=0.5: print(f"{tot[c]:5.1f}%  {c}")
print(f"{other:5.1f}%  other")
