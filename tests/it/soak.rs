//! The soak and fault suite of `bench/soak/`, small: hundreds of connections, not thousands.
//! Each test asserts zero failures and the recovery, never timings (the machine is shared; the
//! scripts print the figures). Every loop is bounded in count and time. Related tests that are
//! not repeated here: one reload under load with invalid and restart-only configs
//! (`reload::reload_under_load_drops_nothing_and_applies_to_new_connections`), one trickled
//! head (`foundation::a_trickled_head_is_cut_at_the_header_timeout_and_counted`), running out
//! of descriptors (`limits`), an SDS restart with rotation and no load
//! (`inject::credentials_over_sds_rotate_and_survive_a_server_restart`), an in-process drain
//! of one idle tunnel (`foundation::shutdown_drains_an_open_tunnel`).

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::common::*;

/// A request's outcome: `Ok`, or what ended it (`"502 upstream_connect"` for a refusal).
type Outcome = Result<(), String>;

/// Reads an HTTP/1 response head without panicking; (status, headers).
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(u16, Vec<(String, String)>), String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            Ok(_) => return Err(format!("closed before the head ({} bytes)", buf.len())),
            Err(e) => return Err(format!("reading the head: {e}")),
        }
        if buf.len() > 65536 {
            return Err("head too long".into());
        }
    }
    let (status, headers, _) = parse_response(&buf);
    Ok((status, headers))
}

fn refusal(status: u16, headers: &[(String, String)]) -> String {
    match header(headers, "x-egress-edge-error") {
        Some(code) => format!("{status} {code}"),
        None => format!("{status}"),
    }
}

/// CONNECT `host:port` on a new connection; the stream after a 200, else the refusal.
async fn connect_to(proxy: SocketAddr, host: &str, port: u16) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let (status, headers) = read_head(&mut s).await?;
    if status != 200 {
        return Err(refusal(status, &headers));
    }
    Ok(s)
}

/// `fut` within 20 s, else an error naming `what`.
async fn step<T>(what: &str, fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| Err(format!("{what}: no progress in 20 s")))
}

/// A new connection: CONNECT, TLS with `cfg` (the upstream's CA for a tunnel, the proxy's
/// for a bump), one `GET path` with `Connection: close`. `Ok` for a 200 whose body is `want`
/// (any body when `want` is `None`). Each step has 20 s.
async fn get_once(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(String, String)],
    want: Option<&str>,
) -> Outcome {
    let s = step("CONNECT", connect_to(proxy, host, port)).await?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = step("TLS", async {
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, s)
            .await
            .map_err(|e| format!("tls: {e}"))
    })
    .await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // Flushed: tokio-rustls may keep the record it could not write at once (the socket, or
    // the task's cooperative budget, said not now) until the next write or flush.
    step("write", async {
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))
    })
    .await?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await {
        Err(_) => {
            return Err(format!(
                "read: no end in 20 s after {} bytes: {:?}",
                out.len(),
                String::from_utf8_lossy(&out[..out.len().min(300)])
            ));
        }
        Ok(Err(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof || out.is_empty() => {
            return Err(format!("read: {e}"));
        }
        Ok(_) => {}
    }
    let (status, h, body) = parse_response(&out);
    if status != 200 {
        return Err(refusal(status, &h));
    }
    match want {
        Some(w) if body != w => Err(format!("body {body:?}")),
        _ => Ok(()),
    }
}

/// Workers repeating an operation until stopped (or 60 s, or 5,000 operations each); every
/// result is kept as (start, end, outcome).
struct Load {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, Instant, Outcome)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start<F, Fut>(workers: usize, op: F) -> Load
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, results, op) = (stop.clone(), results.clone(), op.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for _ in 0..5000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let t0 = Instant::now();
                        let r = op().await;
                        results.lock().unwrap().push((t0, Instant::now(), r));
                    }
                })
            })
            .collect();
        Load {
            stop,
            results,
            tasks,
        }
    }

    /// Has an operation that started at or after `t` succeeded?
    fn ok_since(&self, t: Instant) -> bool {
        self.results
            .lock()
            .unwrap()
            .iter()
            .any(|(s, _, r)| *s >= t && r.is_ok())
    }

    async fn stop(self) -> Vec<(Instant, Instant, Outcome)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.results.lock().unwrap().clone()
    }
}

fn failures(results: &[(Instant, Instant, Outcome)]) -> Vec<String> {
    results
        .iter()
        .filter_map(|(_, _, r)| r.clone().err())
        .collect()
}

fn oks(results: &[(Instant, Instant, Outcome)]) -> usize {
    results.iter().filter(|(_, _, r)| r.is_ok()).count()
}

/// The sum of `name`'s samples whose labels include `label`.
fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    parse_exposition(text)
        .unwrap()
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Polls `/metrics` (every 100 ms, at most `secs`) until `name` (summed as in
/// [`metric_sum`]) equals `want`; the last value otherwise.
async fn wait_value(proxy: &Proxy, name: &str, want: f64, secs: u64) -> Result<(), f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = metric_sum(&proxy.metrics().await, name, None);
        if v == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upstream that accepts, reads whatever comes and never answers; it lets go of a
/// connection when the proxy closes its side.
async fn silent_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A pass-through tunnel to `up.test:port` that sent its ClientHello and holds still.
async fn idle_tunnel(proxy: SocketAddr, port: u16, hello: &[u8]) -> Result<TcpStream, String> {
    let mut s = connect_to(proxy, "up.test", port).await?;
    s.write_all(hello)
        .await
        .map_err(|e| format!("hello: {e}"))?;
    Ok(s)
}

/// Runs `n` copies of `op(i)` at most `conc` at a time; their results in order.
async fn fan_out<T, F, Fut>(n: usize, conc: usize, op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(conc));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let fut = op(i);
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn upstream_roots(pki: &Pki) -> Arc<rustls::ClientConfig> {
    client_config(pki.roots(), &[b"http/1.1"])
}

/// `bench/soak/idle-tunnels.sh`, small: two waves of 300 idle tunnels; every one opens, the
/// gauge counts them, and all are gone after they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_waves_open_and_close_cleanly() {
    let silent = silent_upstream().await;
    let port = silent.port();
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR
network: {{ allow: [127.0.0.1/32], hosts: {{ up.test: 127.0.0.1 }} }}
destinations:
  - {{ host: up.test, ports: [{port}] }}
"
    ))
    .await;
    let hello = Arc::new(client_hello("up.test"));
    for wave in 1..=2 {
        let addr = proxy.addr;
        let opened = fan_out(300, 64, |_| {
            let hello = hello.clone();
            async move { idle_tunnel(addr, port, &hello).await }
        })
        .await;
        let errors: Vec<_> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(errors.is_empty(), "wave {wave}: {errors:?}");
        wait_value(&proxy, "egress_edge_active_tunnels", 300.0, 10)
            .await
            .unwrap_or_else(|v| panic!("wave {wave}: {v} active tunnels, want 300"));
        drop(opened);
        wait_value(&proxy, "egress_edge_active_tunnels", 0.0, 10)
            .await
            .unwrap_or_else(|v| panic!("wave {wave}: {v} tunnels left after closing"));
    }
}

/// The bump rung on `bump.test` and `*.sni.test` (the upstream's leaf covers both), with
/// extra `proxy:` settings and `network.hosts` entries.
/// Upstream connections kept for reuse in the soak tests (`upstream.max_pooled_total`).
const POOLED: usize = 64;

async fn bump_env(proxy_settings: &str, names: &[String]) -> (Pki, SocketAddr, Arc<Seen>, Proxy) {
    let pki = Pki::new("soak upstream CA");
    let leaf = pki.leaf(&["bump.test", "*.sni.test", "up.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let mut hosts = String::from("    bump.test: 127.0.0.1\n    up.test: 127.0.0.1\n");
    for n in names {
        hosts.push_str(&format!("    {n}: 127.0.0.1\n"));
    }
    let yaml = format!(
        "state_dir: STATE_DIR
proxy: {{ {proxy_settings} }}
upstream: {{ extra_roots: [{ca}], max_pooled_total: {POOLED} }}
network:
  allow: [127.0.0.1/32]
  hosts:
{hosts}destinations:
  - {{ host: bump.test, ports: [{port}], rung: bump }}
  - {{ host: '*.sni.test', ports: [{port}], rung: bump }}
  - {{ host: up.test, ports: [{port}] }}
",
        ca = pki.ca_path().display(),
        port = up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    (pki, up, seen, proxy)
}

/// `bench/soak/bump-sessions.sh`, small: 200 concurrent bump sessions, one request each and
/// then held; each is closed by the proxy at `idle_timeout`, and none is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bump_sessions_are_held_then_cut_at_the_idle_timeout() {
    let (_pki, up, _seen, proxy) = bump_env("idle_timeout: 3s", &[]).await;
    let cfg = client_config(proxy.bump_roots(), &[b"http/1.1"]);
    let (addr, port) = (proxy.addr, up.port());
    let sessions = fan_out(200, 200, |_| {
        let cfg = cfg.clone();
        async move {
            let s = connect_to(addr, "bump.test", port).await?;
            let name = ServerName::try_from("bump.test").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, s)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            tls.write_all(b"GET /small HTTP/1.1\r\nHost: bump.test\r\n\r\n")
                .await
                .map_err(|e| format!("write: {e}"))?;
            tls.flush().await.map_err(|e| format!("flush: {e}"))?;
            let (status, headers) = read_head(&mut tls).await?;
            let mut body = [0u8; 5];
            tls.read_exact(&mut body)
                .await
                .map_err(|e| format!("body: {e}"))?;
            if status != 200 || &body != b"hello" {
                return Err(refusal(status, &headers));
            }
            // Held silent: the proxy must close it at idle_timeout.
            let mut rest = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(30), tls.read(&mut rest)).await {
                Ok(Ok(0) | Err(_)) => Ok(()),
                Ok(Ok(n)) => Err(format!("{n} unexpected bytes")),
                Err(_) => Err("not closed within 30 s".into()),
            }
        }
    })
    .await;
    let errors: Vec<_> = sessions.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
    wait_value(&proxy, "egress_edge_active_tunnels", 0.0, 10)
        .await
        .unwrap_or_else(|v| panic!("{v} sessions left"));
}

/// `bench/soak/many-snis.sh`, small: 300 distinct SNIs under one wildcard bump rule all work,
/// each leaf minted exactly once (on the first sight of its name), and no more upstream
/// connections stay open than `upstream.max_pooled_total` and those in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_snis_each_get_one_leaf() {
    const N: usize = 300;
    let names: Vec<String> = (0..N).map(|i| format!("s{i}.sni.test")).collect();
    let (_pki, up, seen, proxy) = bump_env("", &names).await;
    let m = proxy.metrics().await;
    let mints_before = metric_sum(&m, "egress_edge_leaf_mints_total", None);
    let misses_before = metric_sum(&m, "egress_edge_leaf_cache_misses_total", None);
    let cfg = client_config(proxy.bump_roots(), &[b"http/1.1"]);
    let (addr, port) = (proxy.addr, up.port());
    let names = Arc::new(names);
    let results = fan_out(N, 16, |i| {
        let (cfg, names) = (cfg.clone(), names.clone());
        async move {
            let host = &names[i];
            get_once(addr, host, port, cfg, "/small", &[], Some("hello"))
                .await
                .map_err(|e| format!("{host}: {e}"))
        }
    })
    .await;
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of {N} failed: {errors:?}",
        errors.len()
    );
    // One mint per name, each the first sight of it (the cache's entry count is only
    // eventually consistent, so it is not asserted; the script prints it).
    let m = proxy.metrics().await;
    let mints = metric_sum(&m, "egress_edge_leaf_mints_total", None) - mints_before;
    let misses = metric_sum(&m, "egress_edge_leaf_cache_misses_total", None) - misses_before;
    assert_eq!((mints, misses), (N as f64, N as f64), "one mint per name");
    assert_eq!(
        metric_sum(&m, "egress_edge_leaf_mint_failures_total", None),
        0.0
    );
    // Every name needed its own upstream connection; most were closed after their request.
    assert!(seen.connections.load(Ordering::SeqCst) >= N);
    let open = metric_sum(&m, "egress_edge_upstream_connections", None);
    assert!(
        open <= (POOLED + 16) as f64,
        "{open} upstream connections open for {N} names"
    );
}

/// `bench/soak/slowloris.sh`, small: 200 connections trickling a CONNECT head are all cut at
/// `header_read_timeout` (and counted), while a normal client keeps working: 0 failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_while_a_normal_client_keeps_working() {
    const N: usize = 200;
    let (pki, up, _seen, proxy) = bump_env("header_read_timeout: 1s", &[]).await;
    let (addr, port) = (proxy.addr, up.port());
    let tunnel_cfg = upstream_roots(&pki);
    let normal = Load::start(1, move || {
        let cfg = tunnel_cfg.clone();
        async move { get_once(addr, "up.test", port, cfg, "/small", &[], Some("hello")).await }
    });
    let bump_cfg = client_config(proxy.bump_roots(), &[b"http/1.1"]);
    let normal_bump = Load::start(1, move || {
        let cfg = bump_cfg.clone();
        async move { get_once(addr, "bump.test", port, cfg, "/small", &[], Some("hello")).await }
    });
    let slow = fan_out(N, N, |_| async move {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"CONNECT up.test:443 HTTP/1.1\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let trickle = b"Host: up.test:443\r\nUser-Agent: slow-slow-slow-slow-slow";
        let mut buf = [0u8; 512];
        // One byte every 250 ms, at most 50 of them (12.5 s): the cut must come first.
        for b in trickle.iter().take(50) {
            tokio::select! {
                r = s.read(&mut buf) => {
                    return match r {
                        Ok(0) | Err(_) => Ok(()),
                        Ok(n) => Err(format!("answered: {:?}", String::from_utf8_lossy(&buf[..n]))),
                    };
                }
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    let _ = s.write_all(&[*b]).await;
                }
            }
        }
        Err("still open after 12.5 s of trickling".to_owned())
    })
    .await;
    let normal = normal.stop().await;
    let normal_bump = normal_bump.stop().await;
    let errors: Vec<_> = slow.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} slow connections: {errors:?}",
        errors.len()
    );
    for (what, r) in [("tunnel", &normal), ("bump", &normal_bump)] {
        assert!(
            failures(r).is_empty(),
            "normal {what} client: {:?}",
            failures(r)
        );
        assert!(oks(r) > 0, "the normal {what} client did not run");
    }
    let m = proxy.metrics().await;
    let cut = metric_sum(
        &m,
        "egress_edge_connections_total",
        Some(("outcome", "header_timeout")),
    );
    assert_eq!(cut, N as f64, "every cut is counted");
}

/// `bench/soak/overload.sh`, small: with `max_connections` held, every further connection
/// gets `503 proxy_overloaded`; once the holders close, new connections work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_refuses_the_excess_and_recovers() {
    const M: usize = 50;
    let pki = Pki::new("soak upstream CA");
    let leaf = pki.leaf(&["up.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let silent = silent_upstream().await;
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR
proxy: {{ max_connections: {M} }}
network: {{ allow: [127.0.0.1/32], hosts: {{ up.test: 127.0.0.1 }} }}
destinations:
  - {{ host: up.test, ports: [{}, {}] }}
",
        up.port(),
        silent.port()
    ))
    .await;
    let addr = proxy.addr;
    let hello = Arc::new(client_hello("up.test"));
    let holders = fan_out(M, 25, |_| {
        let hello = hello.clone();
        async move { idle_tunnel(addr, silent.port(), &hello).await }
    })
    .await;
    let errors: Vec<_> = holders.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "holders: {errors:?}");
    let excess = fan_out(M, 25, |_| async move {
        connect_to(addr, "up.test", up.port()).await.map(|_| ())
    })
    .await;
    let wrong: Vec<_> = excess
        .iter()
        .filter(|r| r.as_ref().err().map(String::as_str) != Some("503 proxy_overloaded"))
        .collect();
    assert!(
        wrong.is_empty(),
        "every connection over the limit must get 503 proxy_overloaded: {wrong:?}"
    );
    drop(holders);
    let cfg = upstream_roots(&pki);
    let t0 = Instant::now();
    let mut last = Err(String::new());
    while Instant::now() - t0 < Duration::from_secs(20) {
        last = get_once(
            addr,
            "up.test",
            up.port(),
            cfg.clone(),
            "/small",
            &[],
            Some("hello"),
        )
        .await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.is_ok(),
        "no recovery after the holders closed: {last:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = fan_out(M, 25, |_| {
        let cfg = cfg.clone();
        async move {
            get_once(
                addr,
                "up.test",
                up.port(),
                cfg,
                "/small",
                &[],
                Some("hello"),
            )
            .await
        }
    })
    .await;
    let errors: Vec<_> = after.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "after recovery: {errors:?}");
}

/// A free port below the kernel's ephemeral range (32768 and up), so no `bind(0)` or
/// outgoing connection of a parallel test takes it while a process using it is down.
fn quiet_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize
        + std::process::id() as usize;
    (0..200)
        .map(|i| 20_000 + ((seed + i * 7919) % 12_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("no free port in 20000..32000")
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

fn sds_serve(port: u16, secrets: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_egress-edge"))
        .args(["sds", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--secrets")
        .arg(secrets)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `bench/soak/sds-kill.sh`, small: the `egress-edge sds serve` process behind a credential
/// is killed under load and restarted 2 s later; no request fails (every one reaches the
/// upstream with the secret) and the stream reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_killed_under_load_fails_no_request_and_reconnects() {
    const SECRET: &str = "sk-soak-0123456789";
    let pki = Pki::new("soak upstream CA");
    let leaf = pki.leaf(&["api.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        &format!("secrets:\n  api-key: {{ value: {SECRET} }}\n"),
    );
    let sds_port = quiet_port();
    let mut sds = sds_serve(sds_port, &secrets);
    wait_port(sds_port).await;
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1 }} }}
secrets:
  sds: {{ target: 'http://127.0.0.1:{sds_port}', node_id: soak-edge, initial_fetch_timeout: 5s }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: api-key }} }}
",
        ca = pki.ca_path().display(),
        port = up.port()
    ))
    .await;
    wait_value(&proxy, "egress_edge_secrets_warm", 1.0, 10)
        .await
        .expect("the secret never arrived");
    let handle = proxy
        .mint(r#"{"credentials":["api-key"],"ttl":"10m"}"#)
        .await;
    let cfg = client_config(proxy.bump_roots(), &[b"http/1.1"]);
    let (addr, port) = (proxy.addr, up.port());
    let auth = vec![("Authorization".to_owned(), format!("Bearer {handle}"))];
    let load = Load::start(3, move || {
        let (cfg, auth) = (cfg.clone(), auth.clone());
        async move { get_once(addr, "api.test", port, cfg, "/headers", &auth, None).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    sds.kill().await.unwrap();
    wait_value(&proxy, "egress_edge_sds_stream_connected", 0.0, 10)
        .await
        .expect("the proxy never noticed the SDS server was gone");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _sds = sds_serve(sds_port, &secrets);
    wait_value(&proxy, "egress_edge_sds_stream_connected", 1.0, 30)
        .await
        .expect("the SDS stream did not reconnect within 30 s of the restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = load.stop().await;
    assert!(
        failures(&results).is_empty(),
        "{} of {} failed: {:?}",
        failures(&results).len(),
        results.len(),
        failures(&results)
    );
    assert!(oks(&results) > 0, "the load did not run");
    let seen = seen.requests.lock().unwrap();
    let want = format!("Bearer {SECRET}");
    let wrong = seen
        .iter()
        .filter(|(_, h)| h.get("authorization").map(|v| v.as_bytes()) != Some(want.as_bytes()))
        .count();
    assert_eq!(
        wrong, 0,
        "every request reaches the upstream with the secret"
    );
    assert_eq!(seen.len(), oks(&results));
}

/// A test upstream on its own runtime and thread, so it can be killed: dropping the runtime
/// closes its listener and every connection at once, as a killed process would.
struct KillableUpstream {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableUpstream {
    fn start(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) -> (SocketAddr, KillableUpstream) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind(addr).await.unwrap();
                bound_tx.send(l.local_addr().unwrap()).unwrap();
                let _seen = start_upstream_on(l, Some(tls));
                let _ = stopped.await;
            });
            drop(rt);
        });
        let addr = bound_rx.recv().unwrap();
        (
            addr,
            KillableUpstream {
                stop: Some(stop),
                thread: Some(thread),
            },
        )
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for KillableUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `bench/soak/upstream-kill.sh`, small: the upstream dies under tunnel and bump load and
/// comes back on the same port 1.5 s later. Every request started once it is gone fails
/// cleanly (`502 upstream_connect`; one under way as it dies may be cut), none fails before,
/// and both rungs recover once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_under_load_fails_cleanly_and_recovers() {
    const CLEAN: &str = "502 upstream_connect";
    let pki = Pki::new("soak upstream CA");
    let tls = server_config(&pki.leaf(&["up.test", "bump.test"]), &[b"http/1.1"]);
    let quiet = SocketAddr::from(([127, 0, 0, 1], quiet_port()));
    let (up, mut upstream) = KillableUpstream::start(quiet, tls.clone());
    let port = up.port();
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ up.test: 127.0.0.1, bump.test: 127.0.0.1 }} }}
destinations:
  - {{ host: up.test, ports: [{port}] }}
  - {{ host: bump.test, ports: [{port}], rung: bump }}
",
        ca = pki.ca_path().display()
    ))
    .await;
    let addr = proxy.addr;
    let tunnel_cfg = upstream_roots(&pki);
    let bump_cfg = client_config(proxy.bump_roots(), &[b"http/1.1"]);
    let loads = [
        (
            "tunnel",
            Load::start(2, move || {
                let cfg = tunnel_cfg.clone();
                async move { get_once(addr, "up.test", port, cfg, "/small", &[], Some("hello")).await }
            }),
        ),
        (
            "bump",
            Load::start(2, move || {
                let cfg = bump_cfg.clone();
                async move { get_once(addr, "bump.test", port, cfg, "/small", &[], Some("hello")).await }
            }),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_pre = Instant::now();
    tokio::task::block_in_place(|| upstream.kill());
    // From here on the upstream is gone; what was under way meanwhile may have been cut.
    let t_kill = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, mut upstream) = tokio::task::block_in_place(|| KillableUpstream::start(up, tls));
    let t_back = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while loads.iter().any(|(_, l)| !l.ok_since(t_back)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, load) in loads {
        let results = load.stop().await;
        let before: Vec<_> = results
            .iter()
            .filter(|(_, end, r)| *end < t_pre && r.is_err())
            .collect();
        assert!(before.is_empty(), "{what} before the kill: {before:?}");
        // Started while the upstream was down or after: a clean refusal or a success only.
        let unclean: Vec<_> = results
            .iter()
            .filter(|(start, _, r)| *start >= t_kill && r.as_ref().is_err_and(|e| e != CLEAN))
            .map(|(_, _, r)| r.clone())
            .collect();
        assert!(unclean.is_empty(), "{what}: unclean failures {unclean:?}");
        let clean = results
            .iter()
            .filter(|(start, _, r)| {
                *start >= t_kill && r.as_ref().err().map(String::as_str) == Some(CLEAN)
            })
            .count();
        assert!(clean > 0, "{what}: no request met the outage");
        assert!(
            results.iter().any(|(s, _, r)| *s >= t_back && r.is_ok()),
            "{what}: no recovery within 20 s of the restart"
        );
    }
    tokio::task::block_in_place(|| upstream.kill());
}

/// `bench/soak/reload-storm.sh`, small: 20 reloads 100 ms apart, alternating two valid
/// configs, under tunnel and bump load: no request fails, every reload is applied and the
/// last config is in force. (One reload with invalid and restart-only configs:
/// `reload::reload_under_load_drops_nothing_and_applies_to_new_connections`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_fails_nothing() {
    const RELOADS: usize = 20;
    let pki = Pki::new("soak upstream CA");
    let leaf = pki.leaf(&["up.test", "bump.test", "other.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let port = up.port();
    let config = |other: &str, idle: &str| {
        format!(
            "state_dir: STATE_DIR
proxy: {{ idle_timeout: {idle} }}
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ up.test: 127.0.0.1, bump.test: 127.0.0.1, other.test: 127.0.0.1 }} }}
destinations:
  - {{ host: up.test, ports: [{port}] }}
  - {{ host: bump.test, ports: [{port}], rung: bump }}
  - {{ host: other.test, ports: [{port}], rung: {other} }}
",
            ca = pki.ca_path().display()
        )
    };
    let proxy = Proxy::start(&config("deny", "5m")).await;
    let state = proxy.state.path().join("state");
    let texts = [config("deny", "5m"), config("passthrough", "4m")]
        .map(|t| t.replace("STATE_DIR", state.to_str().unwrap()));
    let addr = proxy.addr;
    let tunnel_cfg = upstream_roots(&pki);
    let bump_cfg = client_config(proxy.bump_roots(), &[b"http/1.1"]);
    let tunnel = Load::start(2, move || {
        let cfg = tunnel_cfg.clone();
        async move { get_once(addr, "up.test", port, cfg, "/small", &[], Some("hello")).await }
    });
    let bump = Load::start(2, move || {
        let cfg = bump_cfg.clone();
        async move { get_once(addr, "bump.test", port, cfg, "/small", &[], Some("hello")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..RELOADS {
        let tmp = proxy.config_path.with_extension("tmp");
        std::fs::write(&tmp, &texts[(i + 1) % 2]).unwrap();
        std::fs::rename(&tmp, &proxy.config_path).unwrap();
        proxy.reloader.reload_file(&proxy.config_path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, load) in [("tunnel", tunnel), ("bump", bump)] {
        let results = load.stop().await;
        assert!(
            failures(&results).is_empty(),
            "{what}: {:?}",
            failures(&results)
        );
        assert!(oks(&results) > 0, "{what}: the load did not run");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "egress_edge_config_reloads_total",
            Some(("result", "ok"))
        ),
        RELOADS as f64
    );
    assert_eq!(
        metric_sum(
            &m,
            "egress_edge_config_reloads_total",
            Some(("result", "failed"))
        ),
        0.0
    );
    // RELOADS is even: the last config written is the first one, which denies other.test.
    let r = connect_to(addr, "other.test", port).await.map(|_| ());
    assert_eq!(r, Err("403 destination_denied".to_owned()));
}

/// Runs `egress-edge run --config FILE` (whose `log` is JSON with `egress_edge::app` at info)
/// and waits for its "egress-edge serving" line: the proxy address it bound, once it serves.
async fn run_binary(config: &std::path::Path) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_egress-edge"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "egress-edge serving"
            {
                return v["proxy"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
            }
            seen.push(line);
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("the proxy did not start serving: {seen:?}"));
    // Keep reading its stderr so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Answers any request with 8 MiB, byte i being `i % 251`, over TLS (HTTP/1.1,
/// `Connection: close`), written as fast as the reader takes them.
async fn large_upstream(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(mut s) = tokio_rustls::TlsAcceptor::from(tls).accept(s).await else {
                    return;
                };
                if read_head(&mut s).await.is_err() {
                    return;
                }
                let n: usize = 8 << 20;
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut off = 0;
                while off < n {
                    let len = (n - off).min(65536);
                    let chunk: Vec<u8> = (off..off + len).map(|i| (i % 251) as u8).collect();
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    off += len;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// `bench/soak/sigterm-download.sh`, small: the real binary gets SIGTERM while four 8 MiB
/// downloads (two tunnels, two bump sessions) are under way; each completes intact, new
/// connections are refused meanwhile, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_download_completes_every_download_and_exits_zero() {
    const SIZE: usize = 8 << 20;
    let pki = Pki::new("soak upstream CA");
    let up = large_upstream(server_config(
        &pki.leaf(&["up.test", "bump.test"]),
        &[b"http/1.1"],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "proxy: {{ listen: '127.0.0.1:0', shutdown_grace: 20s }}
admin: {{ listen: '127.0.0.1:0' }}
log: {{ level: 'warn,egress_edge::app=info', format: json }}
state_dir: {state}
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ up.test: 127.0.0.1, bump.test: 127.0.0.1 }} }}
destinations:
  - {{ host: up.test, ports: [{port}] }}
  - {{ host: bump.test, ports: [{port}], rung: bump }}
",
            state = state.display(),
            ca = pki.ca_path().display(),
            port = up.port()
        ),
    );
    let (mut child, addr) = run_binary(&config).await;
    let mut bump_roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(
        &std::fs::read(state.join("ca.pem")).unwrap(),
    ) {
        bump_roots.add(c.unwrap()).unwrap();
    }
    let cfgs = [
        upstream_roots(&pki),
        client_config(bump_roots, &[b"http/1.1"]),
    ];
    let go = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(4);
    let mut downloads = Vec::new();
    for i in 0..4 {
        let (cfg, go, started) = (cfgs[i % 2].clone(), go.clone(), started_tx.clone());
        let host = ["up.test", "bump.test"][i % 2];
        downloads.push(tokio::spawn(async move {
            let s = connect_to(addr, host, up.port()).await?;
            let name = ServerName::try_from(host).unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, s)
                .await
                .map_err(|e| format!("{host}: tls: {e}"))?;
            tls.write_all(
                format!("GET /large HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("{host}: write: {e}"))?;
            tls.flush()
                .await
                .map_err(|e| format!("{host}: flush: {e}"))?;
            let (status, headers) = read_head(&mut tls).await?;
            if status != 200 {
                return Err(format!("{host}: {}", refusal(status, &headers)));
            }
            let mut buf = vec![0u8; 65536];
            let mut got = 0usize;
            let mut notified = false;
            loop {
                if !notified && got >= 256 << 10 {
                    notified = true;
                    let wait = go.notified();
                    started.send(()).await.unwrap();
                    wait.await;
                }
                let n = match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(format!("{host}: after {got} bytes: {e}")),
                };
                if let Some(j) = (0..n).find(|&j| buf[j] != ((got + j) % 251) as u8) {
                    return Err(format!("{host}: wrong byte at {}", got + j));
                }
                got += n;
                if got >= SIZE {
                    break;
                }
            }
            if got == SIZE {
                Ok(())
            } else {
                Err(format!("{host}: {got} of {SIZE} bytes"))
            }
        }));
    }
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(30), started_rx.recv())
            .await
            .expect("the downloads did not start")
            .unwrap();
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a draining proxy must not accept new connections"
    );
    go.notify_waiters();
    for d in downloads {
        let r = tokio::time::timeout(Duration::from_secs(30), d)
            .await
            .expect("a download hung")
            .unwrap();
        assert_eq!(r, Ok(()));
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the proxy did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
