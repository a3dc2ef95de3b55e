//! Every phase of a guest connection has a deadline, and each phase is cut by its own one:
//! `handshake_timeout` until the guest's TLS is up (the ClientHello on a tunnel, the whole
//! handshake in the bump), `header_read_timeout` while the proxy waits for a request head
//! (on the listener, including a keep-alive connection between requests, and inside the bump
//! before the first request), `idle_timeout` once a tunnel or bump session has carried
//! traffic. The three are set to different values so a phase cut by the wrong deadline
//! fails. Phases tested elsewhere: a trickled head (`foundation`), a partial head inside the
//! bump and idle HTTP/2 (`bump`), the transparent listener's protocol sniff (`transparent`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const HANDSHAKE: Duration = Duration::from_millis(1000);
const HEADER: Duration = Duration::from_millis(2000);
const IDLE: Duration = Duration::from_millis(3000);

struct Env {
    proxy: Proxy,
    pki: Pki,
    /// The TLS upstream (`tls.test`, passed through; `bump.test`, bumped).
    tls_up: SocketAddr,
    /// The plain-HTTP upstream (`plain.test`).
    plain_up: SocketAddr,
}

async fn env() -> Env {
    let pki = Pki::new("deadlines upstream CA");
    let leaf = pki.leaf(&["tls.test", "bump.test"]);
    let (tls_up, _) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let (plain_up, _) = start_upstream(None).await;
    let yaml = format!(
        "state_dir: STATE_DIR
proxy: {{ handshake_timeout: {h}ms, header_read_timeout: {r}ms, idle_timeout: {i}ms }}
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ tls.test: 127.0.0.1, bump.test: 127.0.0.1, plain.test: 127.0.0.1 }} }}
destinations:
  - {{ host: tls.test, ports: [{t}], rung: passthrough }}
  - {{ host: bump.test, ports: [{t}], rung: bump }}
  - {{ host: plain.test, ports: [{p}] }}
",
        h = HANDSHAKE.as_millis(),
        r = HEADER.as_millis(),
        i = IDLE.as_millis(),
        ca = pki.ca_path().display(),
        t = tls_up.port(),
        p = plain_up.port(),
    );
    let proxy = Proxy::start(&yaml).await;
    Env {
        proxy,
        pki,
        tls_up,
        plain_up,
    }
}

/// Waits until the proxy closes `s` (EOF or reset); how long that took. Panics past `limit`.
async fn closed_after<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still open after {limit:?}"));
    t0.elapsed()
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, head: &str) {
    s.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(s).await;
    assert_eq!((status, body.as_str()), (200, "hello"), "{head}");
}

/// Drives one phase up to the point where the guest falls silent; then the proxy must close
/// the connection. Returns how long that took.
async fn phase(env: &Env, name: &str) -> Duration {
    let limit = IDLE * 3;
    let tls = |port| format!("tls.test:{port}");
    let bump = format!("bump.test:{}", env.tls_up.port());
    match name {
        "listener: nothing sent" => {
            let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
            closed_after(&mut s, limit).await
        }
        "listener: keep-alive after a response" => {
            let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
            let port = env.plain_up.port();
            get(
                &mut s,
                &format!(
                    "GET http://plain.test:{port}/small HTTP/1.1\r\nHost: plain.test:{port}\r\n\r\n"
                ),
            )
            .await;
            closed_after(&mut s, limit).await
        }
        "tunnel: no ClientHello" => {
            let (status, _, _, mut s) = connect(env.proxy.addr, &tls(env.tls_up.port())).await;
            assert_eq!(status, 200);
            closed_after(&mut s, limit).await
        }
        "tunnel: idle after traffic" => {
            let cfg = client_config(env.pki.roots(), &[b"http/1.1"]);
            let mut s = tls_through(env.proxy.addr, &tls(env.tls_up.port()), "tls.test", cfg)
                .await
                .unwrap();
            get(&mut s, "GET /small HTTP/1.1\r\nHost: tls.test\r\n\r\n").await;
            closed_after(&mut s, limit).await
        }
        "bump: no ClientHello" => {
            let (status, _, _, mut s) = connect(env.proxy.addr, &bump).await;
            assert_eq!(status, 200);
            closed_after(&mut s, limit).await
        }
        "bump: half a ClientHello" => {
            let (status, _, _, mut s) = connect(env.proxy.addr, &bump).await;
            assert_eq!(status, 200);
            let hello = client_hello("bump.test");
            s.write_all(&hello[..hello.len() / 2]).await.unwrap();
            closed_after(&mut s, limit).await
        }
        "bump: no request after the handshake" => {
            let cfg = client_config(env.proxy.bump_roots(), &[b"http/1.1"]);
            let mut s = tls_through(env.proxy.addr, &bump, "bump.test", cfg)
                .await
                .unwrap();
            closed_after(&mut s, limit).await
        }
        "bump: keep-alive after a response" => {
            let cfg = client_config(env.proxy.bump_roots(), &[b"http/1.1"]);
            let mut s = tls_through(env.proxy.addr, &bump, "bump.test", cfg)
                .await
                .unwrap();
            get(
                &mut s,
                &format!("GET /small HTTP/1.1\r\nHost: {bump}\r\n\r\n"),
            )
            .await;
            closed_after(&mut s, limit).await
        }
        other => panic!("no phase {other}"),
    }
}

#[tokio::test]
async fn each_phase_is_cut_by_its_own_deadline() {
    let env = env().await;
    // (phase, the deadline that must cut it, the outcome it is counted as)
    let table = [
        ("listener: nothing sent", HEADER, "header_timeout"),
        (
            "listener: keep-alive after a response",
            HEADER,
            "header_timeout",
        ),
        ("tunnel: no ClientHello", HANDSHAKE, "handshake_timeout"),
        ("tunnel: idle after traffic", IDLE, "idle_timeout"),
        ("bump: no ClientHello", HANDSHAKE, "handshake_timeout"),
        ("bump: half a ClientHello", HANDSHAKE, "handshake_timeout"),
        (
            "bump: no request after the handshake",
            HEADER,
            "header_timeout",
        ),
        ("bump: keep-alive after a response", IDLE, "idle_timeout"),
    ];
    // All phases at once: the test takes about the longest deadline.
    let took =
        futures_util::future::join_all(table.iter().map(|(name, _, _)| phase(&env, name))).await;
    let mut wrong = Vec::new();
    for ((name, deadline, _), took) in table.iter().zip(took) {
        // Never before the deadline; at most a second late on a loaded machine.
        if took + Duration::from_millis(100) < *deadline
            || took > *deadline + Duration::from_secs(1)
        {
            wrong.push(format!(
                "{name}: closed after {took:?}, deadline {deadline:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let text = env.proxy.metrics().await;
    for (name, _, outcome) in table {
        assert!(
            text.contains(&format!("outcome=\"{outcome}\"")),
            "{name}: no {outcome} counted\n{text}"
        );
    }
}
