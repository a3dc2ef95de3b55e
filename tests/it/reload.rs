//! Hot reload under load: no request fails, new connections see the new policy, an invalid
//! config is rejected and the old policy keeps serving. Also the kill switch's state survives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(port: u16, other_rung: &str) -> String {
    format!(
        "state_dir: STATE_DIR
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1, other.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test, ports: [{port}] }}
  - {{ host: other.test, ports: [{port}], rung: {other_rung} }}
"
    )
}

async fn one_request(
    proxy: std::net::SocketAddr,
    port: u16,
    pki_roots: rustls::RootCertStore,
    host: &str,
) -> Result<(), String> {
    let (status, _, body, s) = connect(proxy, &format!("{host}:{port}")).await;
    if status != 200 {
        return Err(format!("CONNECT {status}: {body}"));
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(pki_roots, &[b"http/1.1"]))
        .connect(name, s)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out.ends_with("hello") {
        Ok(())
    } else {
        Err(out)
    }
}

#[tokio::test]
async fn reload_under_load_drops_nothing_and_applies_to_new_connections() {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["upstream.test", "other.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let port = up.port();
    let proxy = Proxy::start(&config(port, "deny")).await;
    let (status, _, _, _) = connect(proxy.addr, &format!("other.test:{port}")).await;
    assert_eq!(status, 403);

    // A steady load of new tunnels to upstream.test while the policy changes.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, roots, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            pki.roots(),
            proxy.addr,
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match one_request(addr, port, roots.clone(), "upstream.test").await {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        failed.lock().unwrap().push(e);
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // An invalid config is rejected; the old policy keeps serving.
    std::fs::write(&proxy.config_path, "destinations:\n  - host: 'a.*.b'\n").unwrap();
    assert!(proxy.reloader.reload_file(&proxy.config_path).is_err());
    // A config that needs a restart is rejected too.
    let text = config(port, "passthrough").replace("state_dir: STATE_DIR", "state_dir: /elsewhere");
    std::fs::write(&proxy.config_path, text).unwrap();
    let err = proxy
        .reloader
        .reload_file(&proxy.config_path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("state_dir"), "{err}");
    let (status, _, _, _) = connect(proxy.addr, &format!("other.test:{port}")).await;
    assert_eq!(status, 403, "old policy must still deny other.test");
    // A valid change is applied.
    let state = proxy.state.path().join("state");
    std::fs::write(
        &proxy.config_path,
        config(port, "passthrough").replace("STATE_DIR", state.to_str().unwrap()),
    )
    .unwrap();
    proxy.reloader.reload_file(&proxy.config_path).unwrap();
    one_request(proxy.addr, port, pki.roots(), "other.test")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        failed.lock().unwrap().is_empty(),
        "failed during reload: {:?}",
        failed.lock().unwrap()
    );
    assert!(ok.load(Ordering::SeqCst) > 10, "the load did not run");
    let m = proxy.metrics().await;
    assert!(
        m.contains("egress_edge_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("egress_edge_config_reloads_total{result=\"failed\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn kill_switch_survives_a_reload_and_closes_tunnels() {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["upstream.test", "other.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let port = up.port();
    let proxy = Proxy::start(&config(port, "deny")).await;
    let mut tls = tls_through(
        proxy.addr,
        &format!("upstream.test:{port}"),
        "upstream.test",
        client_config(pki.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (s, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(s, 200);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(std::time::Duration::from_secs(1), tls.read(&mut buf))
        .await
        .expect("tunnel not closed within 1s");
    assert!(matches!(r, Ok(0) | Err(_)));
    let state = proxy.state.path().join("state");
    std::fs::write(
        &proxy.config_path,
        config(port, "passthrough").replace("STATE_DIR", state.to_str().unwrap()),
    )
    .unwrap();
    proxy.reloader.reload_file(&proxy.config_path).unwrap();
    let (status, headers, _, _) = connect(proxy.addr, &format!("upstream.test:{port}")).await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("kill_switch"));
    let (s, _) = proxy.post("/v1/kill-switch", r#"{"enabled":false}"#).await;
    assert_eq!(s, 200);
    one_request(proxy.addr, port, pki.roots(), "upstream.test")
        .await
        .unwrap();
}

/// The CA exists from the first start: a guest that trusted `/ca.pem` before any destination
/// was bumped trusts the leaves of a bump rule a reload adds later.
#[tokio::test]
async fn a_reload_can_add_the_first_bump_destination() {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["upstream.test", "other.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let port = up.port();
    let proxy = Proxy::start(&config(port, "deny")).await;
    let (status, _, ca_before) = http_get(proxy.admin, "/ca.pem", &[]).await;
    assert_eq!(status, 200, "{ca_before}");
    let state = proxy.state.path().join("state");
    let up_ca = proxy.state.path().join("up-ca.pem");
    std::fs::copy(pki.ca_path(), &up_ca).unwrap();
    let bumped = config(port, "bump").replace("STATE_DIR", state.to_str().unwrap())
        + &format!("upstream: {{ extra_roots: [{}] }}\n", up_ca.display());
    std::fs::write(&proxy.config_path, bumped).unwrap();
    proxy.reloader.reload_file(&proxy.config_path).unwrap();
    let (_, _, ca_after) = http_get(proxy.admin, "/ca.pem", &[]).await;
    assert_eq!(ca_before, ca_after, "the CA must not change");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_before.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    one_request(proxy.addr, port, roots, "other.test")
        .await
        .unwrap();
}

use std::sync::Mutex;
