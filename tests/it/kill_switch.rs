//! The kill switch: closing open tunnels, refusing new egress, the admin API's state and
//! input checks, and a CONNECT admitted just before the switch.

use std::io;
use std::time::{Duration, Instant};

use crate::common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn kill_switch_closes_tunnels_and_refuses_new_egress() {
    let (pki, up, _seen, proxy) = passthrough_env("").await;
    let mut tunnel = open_tunnel(&proxy, &pki, up).await;
    let (status, _, body) = http_get(proxy.admin, "/v1/kill-switch", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["enabled"], false);

    // On: the open tunnel is closed within a second.
    let t0 = Instant::now();
    let (status, body) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["enabled"], true);
    let mut buf = vec![0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(1), tunnel.read(&mut buf))
        .await
        .expect("the tunnel was still open 1s after the kill switch");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));

    // New CONNECTs and plain requests are refused before any upstream connection.
    let (status, headers, body, _) =
        connect(proxy.addr, &format!("upstream.test:{}", up.port())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("kill_switch"));
    let v = json(&body);
    assert_eq!(v["error"], "kill_switch");
    assert!(
        v["detail"].as_str().unwrap().contains("kill switch"),
        "{body}"
    );
    let (status, headers, _, _) = raw(
        proxy.addr,
        &format!(
            "GET http://plain.test:{}/small HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n",
            up.port()
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("kill_switch"));
    // Turning it on again is idempotent.
    let (status, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    // The state shows in the API.
    let (_, _, body) = http_get(proxy.admin, "/v1/kill-switch", &[]).await;
    assert_eq!(json(&body)["enabled"], true);
    let (_, _, body) = http_get(proxy.admin, "/v1/config", &[]).await;
    assert_eq!(json(&body)["kill_switch"], true);

    // Malformed bodies are refused and change nothing.
    for bad in ["", "{", r#"{"enabled":"no"}"#, r#"{"enabled":false,"x":1}"#] {
        let (status, body) = proxy.post("/v1/kill-switch", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(json(&body)["error"], "bad_request");
    }
    assert!(proxy.shared.kill.is_enabled());

    // Off: new tunnels work again.
    let (status, body) = proxy.post("/v1/kill-switch", r#"{"enabled":false}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["enabled"], false);
    let mut again = open_tunnel(&proxy, &pki, up).await;
    // ...and a later kill closes that one too (a fresh generation).
    let (status, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    let r = tokio::time::timeout(Duration::from_secs(1), again.read(&mut buf))
        .await
        .expect("the second tunnel was still open 1s after the kill switch");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

    let m = proxy
        .wait_metric(
            "egress_edge_connections_total{rung=\"passthrough\",outcome=\"kill_switch\",rule=\"destinations[0]\",sandbox=\"none\"} 2",
        )
        .await;
    assert!(
        m.contains("egress_edge_refusals_total{code=\"kill_switch\"} 2"),
        "{m}"
    );
}

/// A CONNECT admitted just before the kill switch, whose ClientHello arrives just after,
/// must not become a live tunnel: the tunnel holds the kill-switch token taken at CONNECT.
#[tokio::test]
async fn kill_switch_catches_tunnels_admitted_before_it() {
    let (pki, up, _seen, proxy) = passthrough_env("").await;
    let (status, _, body, s) = connect(proxy.addr, &format!("upstream.test:{}", up.port())).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    let name = ServerName::try_from("upstream.test").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        let mut tls = tokio_rustls::TlsConnector::from(client_config(pki.roots(), &[b"http/1.1"]))
            .connect(name, s)
            .await?;
        tls.write_all(b"GET /small HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await?;
        io::Result::Ok(out)
    })
    .await;
    if let Ok(Ok(out)) = r {
        assert!(
            !out.contains("hello"),
            "a tunnel reached the upstream while the kill switch was on"
        );
    }
}
