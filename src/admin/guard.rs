//! Browser defences for the `/v1` admin API: cross-site request forgery and DNS rebinding.
//!
//! A browser on the admin host can send "simple" cross-origin requests (a `text/plain` or
//! form POST, no preflight) to a loopback listener, and a page whose name an attacker rebinds
//! to 127.0.0.1 becomes same-origin with it. So, for `/v1/*`:
//! - a request with an `Origin` that is not the listener itself (`Origin: null` included) is
//!   refused with 403 `cross_origin`, however it is authenticated;
//! - on a TCP listener, a request that no credential (token, client certificate)
//!   authenticated must name a loopback address, `localhost`, or the listener's own address in
//!   `Host` (the port is not judged), else 403 `host_not_allowed`; a unix socket has no
//!   meaningful `Host` and is not judged;
//! - a state-changing request (any method but GET, HEAD, OPTIONS, TRACE) must carry
//!   `Content-Type: application/json`, which a browser cannot send cross-site without a CORS
//!   preflight that this listener never answers, else 415 `unsupported_media_type`.
//!
//! This module only judges request heads. Authentication lives in the parent module, and the
//! open endpoints (`/healthz`, `/readyz`, `/metrics`, `/ca.pem`) are not judged here.

use std::net::IpAddr;

use http::uri::Authority;
use http::{HeaderMap, Method, Request, StatusCode, header};

/// How clients reach the admin listener: what a `Host` header may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTransport {
    /// A TCP listener; besides loopback, `Host` may name one of these addresses (the configured
    /// and the bound address; unspecified addresses are never a valid `Host`).
    Tcp { addrs: Vec<IpAddr> },
    /// A unix socket: `Host` means nothing and is not judged.
    Unix,
}

/// Why a `/v1` request was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the admin API refuses requests made by web pages: this request's Origin is not the admin listener; call it from curl or `egress-edge handle` instead"
    )]
    CrossOrigin,
    #[error(
        "the Host header must name the admin listener (a loopback address, localhost, or the configured listen address); any other name is refused as DNS rebinding"
    )]
    HostNotAllowed,
    #[error("state-changing admin requests must send Content-Type: application/json")]
    NotJson,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::CrossOrigin | Refusal::HostNotAllowed => StatusCode::FORBIDDEN,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::CrossOrigin => "cross_origin",
            Refusal::HostNotAllowed => "host_not_allowed",
            Refusal::NotJson => "unsupported_media_type",
        }
    }
}

/// The authority the request was sent to: the request-target's (HTTP/2 `:authority`, or an
/// absolute-form target) or else the single `Host` header. `None` when absent, repeated or
/// not text.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    single(req.headers(), header::HOST)
}

fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::trim)
}

/// Refuses a request whose `Origin` is present and is not `scheme://authority` of this
/// listener (`tls` picks the scheme).
pub fn check_origin(
    headers: &HeaderMap,
    authority: Option<&str>,
    tls: bool,
) -> Result<(), Refusal> {
    if headers.get(header::ORIGIN).is_none() {
        return Ok(());
    }
    let scheme = if tls { "https" } else { "http" };
    let origin = single(headers, header::ORIGIN).ok_or(Refusal::CrossOrigin)?;
    let (origin_scheme, origin_authority) = origin.split_once("://").ok_or(Refusal::CrossOrigin)?;
    if !origin_scheme.eq_ignore_ascii_case(scheme) {
        return Err(Refusal::CrossOrigin);
    }
    let theirs = host_port(origin_authority, scheme).ok_or(Refusal::CrossOrigin)?;
    let ours = authority
        .and_then(|a| host_port(a, scheme))
        .ok_or(Refusal::CrossOrigin)?;
    if theirs == ours {
        Ok(())
    } else {
        Err(Refusal::CrossOrigin)
    }
}

/// Lower-cased host and port (the scheme's default when absent) of a bare authority; `None`
/// for anything else (a path, user info, garbage).
fn host_port(authority: &str, scheme: &str) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let a: Authority = authority.parse().ok()?;
    let default = if scheme == "https" { 443 } else { 80 };
    Some((
        a.host().to_ascii_lowercase(),
        a.port_u16().unwrap_or(default),
    ))
}

/// Refuses, on a TCP listener, a `Host` that names neither loopback nor the listener.
pub fn check_host(authority: Option<&str>, transport: &AdminTransport) -> Result<(), Refusal> {
    let AdminTransport::Tcp { addrs } = transport else {
        return Ok(());
    };
    let (host, _) = authority
        .and_then(|a| host_port(a, "http"))
        .ok_or(Refusal::HostNotAllowed)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let loopback = match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
        if loopback || (!ip.is_unspecified() && addrs.contains(&ip)) {
            return Ok(());
        }
        return Err(Refusal::HostNotAllowed);
    }
    if host.strip_suffix('.').unwrap_or(&host) == "localhost" {
        return Ok(());
    }
    Err(Refusal::HostNotAllowed)
}

/// Refuses a state-changing request that is not `Content-Type: application/json` (parameters
/// such as `charset` allowed).
pub fn check_media_type(method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
    if method.is_safe() {
        return Ok(());
    }
    let ctype = single(headers, header::CONTENT_TYPE).ok_or(Refusal::NotJson)?;
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(Refusal::NotJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origin_table() {
        let cases: &[(&str, Option<&str>, bool, bool)] = &[
            // (Origin, authority, tls, accepted)
            ("http://127.0.0.1:9901", Some("127.0.0.1:9901"), false, true),
            ("HTTP://LOCALHOST:9901", Some("localhost:9901"), false, true),
            ("http://[::1]:9901", Some("[::1]:9901"), false, true),
            ("http://localhost", Some("localhost:80"), false, true),
            ("https://localhost", Some("localhost"), true, true),
            (
                "https://localhost:9901",
                Some("localhost:9901"),
                false,
                false,
            ),
            ("http://evil.example", Some("127.0.0.1:9901"), false, false),
            (
                "http://127.0.0.1:8080",
                Some("127.0.0.1:9901"),
                false,
                false,
            ),
            (
                "http://localhost:9901",
                Some("127.0.0.1:9901"),
                false,
                false,
            ),
            ("null", Some("127.0.0.1:9901"), false, false),
            ("NULL", Some("127.0.0.1:9901"), false, false),
            ("", Some("127.0.0.1:9901"), false, false),
            ("127.0.0.1:9901", Some("127.0.0.1:9901"), false, false),
            (
                "http://127.0.0.1:9901/x",
                Some("127.0.0.1:9901"),
                false,
                false,
            ),
            (
                "http://a@127.0.0.1:9901",
                Some("127.0.0.1:9901"),
                false,
                false,
            ),
            ("http://127.0.0.1:9901", None, false, false),
        ];
        for (origin, authority, tls, ok) in cases {
            let r = check_origin(&headers(&[("origin", origin)]), *authority, *tls);
            assert_eq!(r.is_ok(), *ok, "Origin {origin:?} to {authority:?}");
        }
        assert!(check_origin(&HeaderMap::new(), None, false).is_ok());
        let two = headers(&[
            ("origin", "http://127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
        ]);
        assert_eq!(
            check_origin(&two, Some("127.0.0.1:9901"), false),
            Err(Refusal::CrossOrigin)
        );
    }

    #[test]
    fn host_table() {
        let tcp = AdminTransport::Tcp {
            addrs: vec!["127.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap()],
        };
        let wildcard = AdminTransport::Tcp {
            addrs: vec!["0.0.0.0".parse().unwrap()],
        };
        let cases: &[(Option<&str>, &AdminTransport, bool)] = &[
            (Some("127.0.0.1:9901"), &tcp, true),
            (Some("127.0.0.1"), &tcp, true),
            (Some("127.8.9.10:1"), &tcp, true),
            (Some("localhost:19901"), &tcp, true),
            (Some("LocalHost."), &tcp, true),
            (Some("[::1]:9901"), &tcp, true),
            (Some("[::ffff:127.0.0.1]:9901"), &tcp, true),
            (Some("10.1.2.3:9901"), &tcp, true),
            (Some("evil.example"), &tcp, false),
            (Some("evil.example:9901"), &tcp, false),
            (Some("localhost.evil.example"), &tcp, false),
            (Some("egress-edge-admin"), &tcp, false),
            (Some("10.1.2.4:9901"), &tcp, false),
            (Some("0.0.0.0:9901"), &wildcard, false),
            (Some("a@127.0.0.1"), &tcp, false),
            (None, &tcp, false),
            (Some("evil.example"), &AdminTransport::Unix, true),
            (None, &AdminTransport::Unix, true),
        ];
        for (authority, transport, ok) in cases {
            let r = check_host(*authority, transport);
            assert_eq!(r.is_ok(), *ok, "Host {authority:?} on {transport:?}");
        }
    }

    #[test]
    fn media_type_table() {
        let cases: &[(Method, Option<&str>, bool)] = &[
            (Method::POST, Some("application/json"), true),
            (Method::POST, Some("Application/JSON; charset=utf-8"), true),
            (Method::PUT, Some("application/json"), true),
            (Method::DELETE, Some("application/json"), true),
            (Method::POST, Some("text/plain"), false),
            (
                Method::POST,
                Some("application/x-www-form-urlencoded"),
                false,
            ),
            (Method::POST, Some("multipart/form-data; boundary=x"), false),
            (Method::POST, Some("application/jsonx"), false),
            (Method::POST, None, false),
            (Method::DELETE, None, false),
            (Method::PATCH, Some("text/plain"), false),
            (Method::GET, None, true),
            (Method::GET, Some("text/plain"), true),
            (Method::HEAD, None, true),
        ];
        for (method, ctype, ok) in cases {
            let h = match ctype {
                Some(c) => headers(&[("content-type", c)]),
                None => HeaderMap::new(),
            };
            assert_eq!(
                check_media_type(method, &h).is_ok(),
                *ok,
                "{method} with {ctype:?}"
            );
        }
    }

    #[test]
    fn authority_prefers_the_request_target() {
        let req = Request::get("http://127.0.0.1:9901/v1/config")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&req), Some("127.0.0.1:9901"));
        let req = Request::get("/v1/config")
            .header("host", "localhost:9901")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&req), Some("localhost:9901"));
        let req = Request::get("/v1/config")
            .header("host", "localhost")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&req), None);
    }
}
