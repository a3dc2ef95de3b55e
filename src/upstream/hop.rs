//! Hop-by-hop header handling (RFC 9110 §7.6.1) for relayed requests and responses.
//!
//! Removes the fixed hop-by-hop set, every header the `Connection` header names, and all
//! `Proxy-*` headers (credentials meant for this proxy never travel further). Upgrades are the
//! caller's business: it decides whether to re-add `Connection: upgrade` and `Upgrade`, and
//! [`is_websocket_upgrade`] tells it whether an upgrade is the one kind it may relay.

use http::HeaderMap;
use http::header::{self, HeaderName};

const FIXED: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Strips hop-by-hop headers in place. Keeps `te: trailers` when `keep_te_trailers` (needed to
/// relay gRPC over HTTP/2).
pub fn strip(headers: &mut HeaderMap, keep_te_trailers: bool) {
    let te_trailers = keep_te_trailers
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(FIXED) {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for k in proxy_headers {
        headers.remove(k);
    }
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// The `Upgrade` token a request asks for (e.g. `websocket`), when it asks for one.
pub fn upgrade_token(headers: &HeaderMap) -> Option<http::HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if connection_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Whether `headers` ask for WebSocket and nothing else: exactly one `Upgrade` field whose
/// value is the single token `websocket` (any case). Used on requests and on 101 responses.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::UPGRADE).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_named_and_proxy_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "Basic Zm9v".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("proxy-foo", "x".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn keeps_te_trailers_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        strip(&mut h, true);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_needs_connection_token() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(upgrade_token(&h).is_none());
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(upgrade_token(&h).unwrap(), "websocket");
    }

    #[test]
    fn only_a_lone_websocket_token_is_websocket() {
        let upgrade = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("upgrade", v.parse().unwrap());
            }
            is_websocket_upgrade(&h)
        };
        assert!(upgrade(&["websocket"]));
        assert!(upgrade(&["WebSocket "]));
        for refused in [
            &["h2c"][..],
            &["TLS/1.0"],
            &["foo"],
            &["websocket, foo"],
            &["foo, websocket"],
            &["websocket", "h2c"],
            &[],
        ] {
            assert!(!upgrade(refused), "{refused:?}");
        }
    }
}
