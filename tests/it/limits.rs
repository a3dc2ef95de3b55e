//! Running out of file descriptors, with the real binary under a small `RLIMIT_NOFILE`
//! (`prlimit`): guests are told `503 proxy_overloaded` (the proxy's limit), never
//! `502 upstream_connect` (which would blame the upstream), and none is left hanging.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_is_503_proxy_overloaded_not_an_upstream_error() {
    let pki = Pki::new("limits upstream CA");
    let leaf = pki.leaf(&["up.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "proxy: {{ listen: 127.0.0.1:{port} }}
admin: {{ listen: 127.0.0.1:0 }}
state_dir: {state}
network: {{ allow: [127.0.0.1/32], hosts: {{ up.test: 127.0.0.1 }} }}
destinations:
  - {{ host: up.test, ports: [{up_port}] }}
",
            state = dir.path().join("state").display(),
            up_port = up.port()
        ),
    );
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = tokio::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_egress-edge"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the proxy did not start");
    let mut open = Vec::new();
    let (mut ok, mut overloaded, mut other) = (0, 0, Vec::new());
    for _ in 0..60 {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            other.push("connect failed".to_owned());
            continue;
        };
        let req = format!(
            "CONNECT up.test:{p} HTTP/1.1\r\nHost: up.test:{p}\r\n\r\n",
            p = up.port()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b).await {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
        })
        .await;
        let head = String::from_utf8_lossy(&head).to_string();
        if answered.is_err() {
            other.push(format!("no answer in 5s: {head:?}"));
        } else if head.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else if head.starts_with("HTTP/1.1 503")
            && head.contains("x-egress-edge-error: proxy_overloaded")
        {
            overloaded += 1;
        } else {
            other.push(head);
        }
        open.push(s);
    }
    let _ = child.kill().await;
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(
        ok >= 5,
        "ok {ok}, overloaded {overloaded}, other {other:?}\n{log}"
    );
    assert!(
        overloaded >= 1,
        "ok {ok}, overloaded {overloaded}, other {other:?}\n{log}"
    );
    assert!(
        other.is_empty(),
        "every guest gets 200 or 503 proxy_overloaded: {other:?}\n{log}"
    );
}
