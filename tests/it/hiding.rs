//! A handle never reaches an upstream, however it is hidden: as the method (HTTP/1.1 and
//! `:method` over HTTP/2), next to a non-ASCII byte, percent-encoded, truncated, extended, in
//! upper case, malformed. Each form is sent raw through the bump and must be refused with
//! nothing forwarded. Also: handles swapped in place (several headers, `Basic`, a query
//! parameter) and TRACE refused at credential destinations.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::common::*;
use crate::inject::{body_json, env, error_code, leak_scan};

/// Sends `head` (a raw HTTP/1.1 request head) through the bump to `host`; the status and the
/// refusal code.
async fn raw_bumped(
    env: &crate::inject::Env,
    host: &str,
    head: &[u8],
) -> (u16, Option<String>, String) {
    let mut tls = tls_through(
        env.proxy.addr,
        &format!("{host}:{}", env.up.port()),
        host,
        client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(head).await.unwrap();
    let (status, headers, body) = read_response(&mut tls).await;
    let code = header(&headers, "x-egress-edge-error").map(str::to_owned);
    (status, code, body)
}

fn request(method: &str, path: &str, host: &str, port: u16, extra: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n").into_bytes();
    head.extend_from_slice(extra);
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

#[tokio::test]
async fn every_hiding_form_is_refused_and_nothing_is_forwarded() {
    let env = env().await;
    let port = env.up.port();
    let good = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    let (payload, sig) = good.split_once('.').unwrap();
    let upper = format!("EEH_{}", &good[4..]);
    let truncated = good[..good.len() - 5].to_owned();
    let extended = format!("{good}AAAA");
    let pct_dot = format!("{payload}%2E{sig}");
    let mut cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "handle as the method",
            "api.test",
            request(&good, "/headers", "api.test", port, b""),
            "handle_out_of_scope",
        ),
        (
            "non-ASCII byte next to a handle in another header",
            "api.test",
            request(
                "GET",
                "/headers",
                "api.test",
                port,
                format!("X-Note: caf\u{e9} {good}\r\n").as_bytes(),
            ),
            "handle_out_of_scope",
        ),
        (
            "raw latin-1 byte in the binding header before a truncated handle",
            "api.test",
            request(
                "GET",
                "/headers",
                "api.test",
                port,
                &[
                    b"Authorization: Bearer \xff".as_slice(),
                    truncated.as_bytes(),
                    b"\r\n",
                ]
                .concat(),
            ),
            "handle_invalid",
        ),
        (
            "percent-encoded dot in the URI",
            "api.test",
            request(
                "GET",
                &format!("/headers?k={pct_dot}"),
                "api.test",
                port,
                b"",
            ),
            "handle_invalid",
        ),
        (
            "truncated",
            "api.test",
            request(
                "GET",
                "/headers",
                "api.test",
                port,
                format!("Authorization: Bearer {truncated}\r\n").as_bytes(),
            ),
            "handle_invalid",
        ),
        (
            "extended",
            "api.test",
            request(
                "GET",
                "/headers",
                "api.test",
                port,
                format!("Authorization: Bearer {extended}\r\n").as_bytes(),
            ),
            "handle_invalid",
        ),
        (
            "upper-case prefix",
            "api.test",
            request(
                "GET",
                "/headers",
                "api.test",
                port,
                format!("Authorization: Bearer {upper}\r\n").as_bytes(),
            ),
            "handle_invalid",
        ),
        (
            "malformed",
            "api.test",
            request(
                "GET",
                "/headers",
                "api.test",
                port,
                b"X-Key: eeh_notahandle\r\n",
            ),
            "handle_invalid",
        ),
        (
            "malformed at a destination without a credential",
            "plain.test",
            request("GET", "/headers", "plain.test", port, b"X-Key: eeh_x\r\n"),
            "handle_out_of_scope",
        ),
        (
            "percent-encoded prefix at a destination without a credential",
            "plain.test",
            request(
                "GET",
                &format!("/headers?q=%65eh_{}", &good[4..]),
                "plain.test",
                port,
                b"",
            ),
            "handle_out_of_scope",
        ),
    ];
    // A 60 KB header of repeated prefixes: refused, and in linear time.
    let junk = format!("X-Junk: {}\r\n", "eeh_".repeat(15_000));
    cases.push((
        "60 KB of prefixes",
        "api.test",
        request("GET", "/headers", "api.test", port, junk.as_bytes()),
        "handle_invalid",
    ));
    let mut bodies = Vec::new();
    for (case, host, head, code) in &cases {
        let t0 = Instant::now();
        let (status, got, body) = raw_bumped(&env, host, head).await;
        assert_eq!(status, 403, "{case}: {body}");
        assert_eq!(got.as_deref(), Some(*code), "{case}: {body}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{case}: too slow");
        bodies.push(body);
    }
    assert!(
        env.seen.requests.lock().unwrap().is_empty(),
        "a refused request reached the upstream"
    );
    leak_scan(&env.proxy, &[&good, &extended, &upper[4..]], &bodies).await;
}

/// `:method` over HTTP/2 is scanned like any other field.
#[tokio::test]
async fn handle_as_the_http2_method_is_refused() {
    let env = env().await;
    let good = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    let tls = tls_through(
        env.proxy.addr,
        &format!("api.test:{}", env.up.port()),
        "api.test",
        client_config(env.proxy.bump_roots(), &[b"h2"]),
    )
    .await
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::from_bytes(good.as_bytes()).unwrap())
        .uri(format!("https://api.test:{}/headers", env.up.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-egress-edge-error"], "handle_out_of_scope");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(env.seen.requests.lock().unwrap().is_empty());
    leak_scan(
        &env.proxy,
        &[&good],
        &[String::from_utf8_lossy(&body).into()],
    )
    .await;
}

/// One binding serves both SDK generations: the handle is swapped in place in whichever of
/// the listed headers carries it, keeping the rest of the value.
#[tokio::test]
async fn handle_is_swapped_in_place_in_any_listed_header_basic_or_query() {
    let env = env().await;
    let h = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    // What the upstream received; its echo of the secret is redacted on the way back.
    let out = env
        .get("swap.test", "/headers", &[&format!("x-api-key: {h}")])
        .await;
    assert_eq!(env.upstream_header("x-api-key"), "sk-live-SECRET1");
    assert_eq!(
        body_json(&out)["x-api-key"],
        "***************",
        "echo redacted"
    );
    env.get(
        "swap.test",
        "/headers",
        &[&format!("Authorization: Bearer {h}")],
    )
    .await;
    assert_eq!(
        env.upstream_header("authorization"),
        "Bearer sk-live-SECRET1"
    );
    // git and pip send `Basic base64(user:password)`: the handle as the password.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{h}"));
    env.get(
        "swap.test",
        "/headers",
        &[&format!("Authorization: Basic {basic}")],
    )
    .await;
    let want = base64::engine::general_purpose::STANDARD.encode("x-access-token:sk-live-SECRET1");
    assert_eq!(
        env.upstream_header("authorization"),
        format!("Basic {want}")
    );
    // A handle in a header the binding does not list is an exfiltration attempt.
    let out = env
        .get("swap.test", "/headers", &[&format!("x-other: {h}")])
        .await;
    assert_eq!(
        error_code(&out).as_deref(),
        Some("handle_out_of_scope"),
        "{out}"
    );
    // The query-parameter binding.
    env.get("query.test", &format!("/headers?alt=json&key={h}"), &[])
        .await;
    assert_eq!(env.upstream_path(), "/headers?alt=json&key=sk-live-SECRET1");
    let out = env
        .get("query.test", &format!("/headers?other={h}"), &[])
        .await;
    assert_eq!(
        error_code(&out).as_deref(),
        Some("handle_out_of_scope"),
        "{out}"
    );
    env.upstream_saw_no_handle();
    leak_scan(&env.proxy, &["sk-live-SECRET1", &h], &[]).await;
}

/// TRACE echoes the request back; it never goes to a destination that holds a credential.
#[tokio::test]
async fn trace_is_refused_at_credential_destinations() {
    let env = env().await;
    let (status, code, _) = raw_bumped(
        &env,
        "api.test",
        &request("TRACE", "/headers", "api.test", env.up.port(), b""),
    )
    .await;
    assert_eq!((status, code.as_deref()), (403, Some("destination_denied")));
    assert!(env.seen.requests.lock().unwrap().is_empty());
}

/// An upstream that echoes the request (headers, body) never hands the injected secret back
/// to the guest, in plain, base64 or URL-encoded form; each redaction is counted and audited.
#[tokio::test]
async fn a_reflected_secret_never_comes_back_to_the_guest() {
    let logs = crate::inject::capture_logs();
    let env = env().await;
    let h = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    for path in ["/headers", "/reflect"] {
        let out = env
            .get("api.test", path, &[&format!("Authorization: Bearer {h}")])
            .await;
        assert!(out.contains(" 200"), "{path}: {out}");
        assert_eq!(
            env.upstream_header("authorization"),
            "Bearer sk-live-SECRET1"
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode("sk-live-SECRET1");
        for form in [
            "sk-live-SECRET1",
            b64.as_str(),
            "sk-live-SECRET1".replace('-', "%2D").as_str(),
        ] {
            assert!(!out.contains(form), "{path}: `{form}` came back: {out}");
        }
    }
    let m = env
        .proxy
        .wait_metric("egress_edge_secret_reflections_total{secret=\"openai-key\"}")
        .await;
    assert!(!m.contains("sk-live"), "{m}");
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(text.contains("secret_reflected"), "no audit event");
    leak_scan(&env.proxy, &["sk-live-SECRET1", &h], &[]).await;
}
