"""Shared by the soak drivers: process figures, /metrics, a throwaway PKI, the upstream, and
asyncio clients that go through the proxy (CONNECT, then TLS to the upstream or to the bump).

Also a command line for the shell scripts:
  soaklib.py pki DIR NAME...                 upstream CA + leaf for NAMEs in DIR
  soaklib.py upstream PORT CERT KEY [SECRET] the upstream (below), until killed

The upstream is HTTP/1.1 over TLS on 127.0.0.1:PORT (ALPN http/1.1, keep-alive):
  /small        "hello"
  /large?bytes=N  N bytes of PATTERN, streamed (default 64 MiB)
  /auth         "hello" if `authorization: Bearer SECRET`, else 403 "no secret"
Everything here talks to 127.0.0.1 only. Python 3.11 stdlib plus `cryptography` (pki only).
"""
import asyncio, os, resource, signal, ssl, subprocess, sys, time, urllib.request, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = bytes((i * 7 + 3) % 251 for i in range(1 << 18))  # 256 KiB, not a power-of-2 period
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- process figures -------------------------------------------------------------------

def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def rss_mib(pid):
    return status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid):
    """Peak RSS of the process so far."""
    return status_kib(pid, "VmHWM") / 1024


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def alive(pid):
    """False once the process has exited (gone, or a zombie its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except FileNotFoundError:
        return False
    return True


def client_hello(server_name):
    """The bytes of a real TLS ClientHello for `server_name`, made without a connection."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


# ---- admin API ---------------------------------------------------------------------------

def admin_get(aport, path, timeout=5):
    with NO_PROXY.open(f"http://127.0.0.1:{aport}{path}", timeout=timeout) as r:
        return r.read().decode()


def admin_post(aport, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{aport}{path}", data=body.encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with NO_PROXY.open(req, timeout=5) as r:
        return r.read().decode()


def metrics(aport):
    """{'name{labels}': value} from /metrics."""
    out = {}
    for line in admin_get(aport, "/metrics").splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, name, *needles):
    """Sum of the samples of `name` whose labels contain every needle (`outcome="ok"`)."""
    total = 0.0
    for key, v in m.items():
        base = key.split("{", 1)[0]
        if base == name and all(n in key for n in needles):
            total += v
    return total


# ---- figures -----------------------------------------------------------------------------

def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def ms(v):
    return f"{v * 1000:.1f} ms"


# ---- PKI -----------------------------------------------------------------------------------

def make_pki(d, names):
    """An ECDSA P-256 CA and one leaf for `names` in d/{ca,leaf,leaf-key}.pem."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID

    os.makedirs(d, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "soak upstream CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    with open(os.path.join(d, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(os.path.join(d, "leaf.pem"), "wb") as f:
        f.write(leaf.public_bytes(pem))
    with open(os.path.join(d, "leaf-key.pem"), "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


# ---- the upstream --------------------------------------------------------------------------

async def serve_upstream(port, cert, key, secret=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])

    async def respond(w, status, body, close):
        w.write(f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n"
                f"{'connection: close' if close else 'connection: keep-alive'}\r\n\r\n".encode()
                + body)
        await w.drain()

    async def handle(r, w):
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if int(headers.get("content-length", "0") or 0):
                    await r.readexactly(int(headers["content-length"]))
                close = headers.get("connection", "").lower() == "close"
                path, _, query = target.partition("?")
                if path == "/small":
                    await respond(w, "200 OK", b"hello", close)
                elif path == "/auth":
                    if secret is not None and headers.get("authorization") == f"Bearer {secret}":
                        await respond(w, "200 OK", b"hello", close)
                    else:
                        await respond(w, "403 Forbidden", b"no secret", close)
                elif path == "/large":
                    n = 64 << 20
                    for kv in query.split("&"):
                        if kv.startswith("bytes="):
                            n = int(kv[6:])
                    w.write(f"HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n"
                            f"content-type: application/octet-stream\r\n\r\n".encode())
                    left = n
                    while left > 0:
                        chunk = BLOCK if left >= len(BLOCK) else BLOCK[:left]
                        w.write(chunk)
                        left -= len(chunk)
                        await w.drain()
                else:
                    await respond(w, "404 Not Found", b"no such path", close)
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ssl.SSLError, ValueError, OSError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx, backlog=4096,
                                        reuse_address=True)
    async with server:
        await server.serve_forever()


def large_crc(n):
    """The CRC-32 of the first n bytes of the upstream's /large body."""
    crc, left = 0, n
    while left > 0:
        chunk = BLOCK if left >= len(BLOCK) else BLOCK[:left]
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


def wait_port(port, secs=10):
    import socket
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Upstream:
    """The upstream as a child process, so a soak can kill (SIGKILL) and restart it."""

    def __init__(self, port, pki, secret=None):
        self.port, self.pki, self.secret, self.proc = port, pki, secret, None

    def _spawn(self):
        args = [sys.executable, os.path.join(HERE, "soaklib.py"), "upstream", str(self.port),
                os.path.join(self.pki, "leaf.pem"), os.path.join(self.pki, "leaf-key.pem")]
        if self.secret:
            args.append(self.secret)
        self.proc = subprocess.Popen(args)

    def start(self):
        """Starts it and waits (blocking) until it accepts: before any load runs."""
        self._spawn()
        wait_port(self.port)
        return self

    async def restart(self):
        """Starts it again without blocking the event loop (the load keeps running) and
        returns once it accepts."""
        self._spawn()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return self
            except OSError:
                await asyncio.sleep(0.02)
        raise RuntimeError(f"the upstream did not come back on 127.0.0.1:{self.port}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()


# ---- clients -------------------------------------------------------------------------------

class Fail(Exception):
    """A request that did not succeed; `kind` is what the counts are keyed by."""

    def __init__(self, kind, detail=""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def client_ctx(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def read_head(r, timeout=30):
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as e:
        raise Fail("closed_before_head", repr(e.partial[:60]))
    except asyncio.TimeoutError:
        raise Fail("head_timeout")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise Fail("bad_status_line", lines[0][:60])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(r, headers, timeout=60, crc=None):
    """The body of a response with content-length; with crc (an initial CRC-32, e.g. 0),
    (length, CRC-32) instead, read in chunks."""
    n = int(headers.get("content-length", "-1"))
    if n < 0:
        raise Fail("no_content_length")
    if crc is None:
        try:
            return await asyncio.wait_for(r.readexactly(n), timeout)
        except asyncio.IncompleteReadError as e:
            raise Fail("body_cut", f"{len(e.partial)} of {n} bytes")
    got, c = 0, crc
    while got < n:
        chunk = await asyncio.wait_for(r.read(min(1 << 18, n - got)), timeout)
        if not chunk:
            raise Fail("body_cut", f"{got} of {n} bytes")
        c = zlib.crc32(chunk, c)
        got += len(chunk)
    return got, c


def refusal_kind(status, headers):
    code = headers.get("x-egress-edge-error")
    return f"{status} {code}" if code else f"{status}"


async def connect(pport, host, port, timeout=30):
    """A CONNECT through the proxy; returns (reader, writer) after a 200, else raises Fail
    keyed by the refusal ('502 upstream_connect', ...)."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", pport), timeout)
    except OSError as e:  # refused, reset, or the timeout (a TimeoutError is an OSError)
        raise Fail("proxy_connect", repr(e))
    try:
        w.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        try:
            status, headers = await read_head(r, timeout)
        except Fail as e:  # name the stage: no answer to the CONNECT itself
            raise Fail(f"connect_{e.kind}", e.detail)
        if status != 200:
            raise Fail(refusal_kind(status, headers))
        return r, w
    except (OSError, ssl.SSLError) as e:
        w.close()
        raise Fail("reset", repr(e))
    except BaseException:
        w.close()
        raise


async def start_tls(r, w, ctx, sni, timeout=30):
    try:
        await asyncio.wait_for(w.start_tls(ctx, server_hostname=sni), timeout)
    except (ssl.SSLError, ssl.CertificateError) as e:
        raise Fail("tls", repr(e))
    except asyncio.TimeoutError:
        raise Fail("tls_timeout")
    except OSError as e:
        raise Fail("reset", repr(e))


async def request(r, w, host, path, headers=(), close=True, timeout=30):
    """One GET on an open (TLS) stream; returns (status, headers, body)."""
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode())
        status, h = await read_head(r, timeout)
        body = await read_body(r, h, timeout)
        return status, h, body
    except TimeoutError:
        raise Fail("timeout")
    except (OSError, ssl.SSLError) as e:
        raise Fail("reset", repr(e))


async def close(w):
    w.close()
    try:
        await asyncio.wait_for(w.wait_closed(), 5)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        pass


async def one_get(pport, host, port, ctx, path="/small", headers=(), want=b"hello", timeout=30):
    """New connection: CONNECT host:port, TLS (ctx: the upstream CA for a tunnel, the proxy's
    CA for a bump), one GET with `Connection: close`. Raises Fail unless 200 `want`."""
    r, w = await connect(pport, host, port, timeout)
    try:
        await start_tls(r, w, ctx, host, timeout)
        status, h, body = await request(r, w, host, path, headers, True, timeout)
        if status != 200:
            raise Fail(refusal_kind(status, h), body[:120].decode("latin-1"))
        if body != want:
            raise Fail("wrong_body", repr(body[:60]))
    finally:
        await close(w)


class Session:
    """A bump (or tunnel) session reused for `per_session` keep-alive requests, then closed
    and opened anew; `get()` is one request on it (a failed request drops the session)."""

    def __init__(self, pport, host, port, ctx, path="/small", headers=(), want=b"hello",
                 per_session=20):
        self.pport, self.host, self.port, self.ctx = pport, host, port, ctx
        self.path, self.headers, self.want, self.per_session = path, headers, want, per_session
        self.rw, self.used = None, 0

    async def get(self):
        try:
            if self.rw is None:
                r, w = await connect(self.pport, self.host, self.port)
                self.rw, self.used = (r, w), 0
                await start_tls(r, w, self.ctx, self.host)
            r, w = self.rw
            self.used += 1
            last = self.used >= self.per_session
            status, h, body = await request(r, w, self.host, self.path, self.headers, last)
            if status != 200:
                raise Fail(refusal_kind(status, h), body[:120].decode("latin-1"))
            if body != self.want:
                raise Fail("wrong_body", repr(body[:60]))
            if last or h.get("connection", "").lower() == "close":
                await self.drop()
        except BaseException:
            await self.drop()
            raise

    async def drop(self):
        if self.rw is not None:
            w = self.rw[1]
            self.rw = None
            await close(w)


class Load:
    """Workers that each repeat `op()` until stop(), or until `max_requests` in all or
    `max_secs`; every result is kept as (end time, kind, start time), kind 'ok' or a Fail
    kind. `op` may be a list (one per worker, e.g. each worker's own Session)."""

    def __init__(self, name, op, workers, max_requests=1_000_000, max_secs=300):
        self.name, self.op, self.workers = name, op, workers
        self.max_requests, self.max_secs = max_requests, max_secs
        self.results, self.details, self._stop = [], {}, asyncio.Event()
        self.latencies = []

    async def _worker(self, op):
        deadline = time.monotonic() + self.max_secs
        while (not self._stop.is_set() and len(self.results) < self.max_requests
               and time.monotonic() < deadline):
            t0 = time.monotonic()
            try:
                await op()
                kind = "ok"
                self.latencies.append(time.monotonic() - t0)
            except Fail as e:
                kind = e.kind
                self.details.setdefault(kind, e.detail)
            except Exception as e:  # anything unexpected is a failure too, named
                kind = type(e).__name__
                self.details.setdefault(kind, repr(e))
            self.results.append((time.monotonic(), kind, t0))

    def start(self):
        ops = self.op if isinstance(self.op, list) else [self.op] * self.workers
        self.tasks = [asyncio.create_task(self._worker(op)) for op in ops]
        return self

    async def stop(self):
        self._stop.set()
        await asyncio.gather(*self.tasks)

    def counts(self, since=0.0, until=float("inf")):
        """Results that ended in [since, until)."""
        out = {}
        for t, k, _ in self.results:
            if since <= t < until:
                out[k] = out.get(k, 0) + 1
        return out

    def first_ok_after(self, t):
        """The end time of the first success that started at or after t."""
        return min((e for e, k, s in self.results if k == "ok" and s >= t), default=None)

    def last_fail(self):
        return max((e for e, k, _ in self.results if k != "ok"), default=None)

    def summary(self, since=0.0, until=float("inf")):
        c = self.counts(since, until)
        ok = c.pop("ok", 0)
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "none"
        return ok, sum(c.values()), fails


def main():
    cmd = sys.argv[1]
    if cmd == "pki":
        make_pki(sys.argv[2], sys.argv[3:])
    elif cmd == "upstream":
        raise_nofile()
        secret = sys.argv[5] if len(sys.argv) > 5 else None
        try:
            asyncio.run(serve_upstream(int(sys.argv[2]), sys.argv[3], sys.argv[4], secret))
        except KeyboardInterrupt:
            pass
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
