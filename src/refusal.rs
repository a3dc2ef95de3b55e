//! What a refused guest sees: the contract's JSON body and `x-egress-edge-error` header.
//!
//! Every proxy-generated refusal is a [`Refusal`]; the `from_*` functions here are the only
//! mapping from stage errors (dial, connect, send) to refusals, and [`respond`] is the only
//! function that turns one into a guest-facing response, so codes, statuses and wording cannot
//! drift between stages. `detail` and `hint` are written for a person and for an AI agent; they never contain
//! a secret or a whole handle (only the values the stages put in, which are hosts, ports, rule
//! ids, address ranges and handle ids).

use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, full};
use crate::upstream::connector::{ConnectError, find_connect_error};
use crate::upstream::relay::SendError;
use serde::Serialize;

pub const ERROR_HEADER: &str = "x-egress-edge-error";

/// A refusal, with the facts the body reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    pub rule: String,
    /// Extra, code-specific fact (the denied range, the TLS cause, the SNI …), safe to show.
    pub cause: Option<String>,
    /// The id of the refused request, shown to the guest and logged, for correlation.
    pub request_id: Option<String>,
}

/// Refusal codes of the contract, plus the proxy's own request errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    DestinationDenied,
    AddressDenied,
    /// Transparent mode: the connection was addressed to an address the proxy does not
    /// resolve the named host to (`curl --resolve`, domain fronting).
    AddressMismatch,
    SniMismatch,
    HostMismatch,
    HandleInvalid,
    HandleExpired,
    HandleRevoked,
    HandleOutOfScope,
    HandleRequired,
    CredentialUnavailable,
    UpstreamTls,
    UpstreamConnect,
    UpstreamTimeout,
    KillSwitch,
    BadRequest,
    /// The request's header section is larger than `proxy.max_header_bytes`.
    HeadersTooLarge,
    Overloaded,
    /// The destination's rule does not allow the request's method.
    MethodDenied,
    /// The destination's rule does not allow the request's (normalised) path.
    PathDenied,
    /// The handle is bound to another sandbox than the connection's.
    HandleWrongSandbox,
    /// Explicit listener: a proxy token is required, or the one sent is not valid (407).
    ProxyAuthRequired,
    /// Transparent listener with `proxy.require_sandbox`: no sandbox claims the source address.
    SandboxRequired,
    /// The unit's sandbox was removed while the request was under way.
    SandboxRemoved,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::DestinationDenied => "destination_denied",
            Kind::AddressDenied => "address_denied",
            Kind::AddressMismatch => "address_mismatch",
            Kind::SniMismatch => "sni_mismatch",
            Kind::HostMismatch => "host_mismatch",
            Kind::HandleInvalid => "handle_invalid",
            Kind::HandleExpired => "handle_expired",
            Kind::HandleRevoked => "handle_revoked",
            Kind::HandleOutOfScope => "handle_out_of_scope",
            Kind::HandleRequired => "handle_required",
            Kind::CredentialUnavailable => "credential_unavailable",
            Kind::UpstreamTls => "upstream_tls",
            Kind::UpstreamConnect => "upstream_connect",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::KillSwitch => "kill_switch",
            Kind::BadRequest => "bad_request",
            Kind::HeadersTooLarge => "headers_too_large",
            Kind::Overloaded => "proxy_overloaded",
            Kind::MethodDenied => "method_denied",
            Kind::PathDenied => "path_denied",
            Kind::HandleWrongSandbox => "handle_wrong_sandbox",
            Kind::ProxyAuthRequired => "proxy_auth_required",
            Kind::SandboxRequired => "sandbox_required",
            Kind::SandboxRemoved => "sandbox_removed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::DestinationDenied
            | Kind::AddressDenied
            | Kind::AddressMismatch
            | Kind::SniMismatch
            | Kind::HostMismatch
            | Kind::HandleInvalid
            | Kind::HandleExpired
            | Kind::HandleRevoked
            | Kind::HandleOutOfScope
            | Kind::HandleRequired
            | Kind::KillSwitch
            | Kind::MethodDenied
            | Kind::PathDenied
            | Kind::HandleWrongSandbox
            | Kind::SandboxRequired
            | Kind::SandboxRemoved => StatusCode::FORBIDDEN,
            Kind::ProxyAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Kind::CredentialUnavailable | Kind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Kind::UpstreamTls | Kind::UpstreamConnect => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Policy refusals say "do not retry"; transient ones say when retrying helps.
    fn hint(self) -> &'static str {
        match self {
            Kind::DestinationDenied | Kind::AddressDenied => {
                "this is policy, not a network fault: do not retry or route around it; ask the operator to allow the destination"
            }
            Kind::AddressMismatch => {
                "the connection went to an address this proxy does not resolve the name to (a pinned or overridden address, or domain fronting); resolve the name through the sandbox's resolver and do not override it"
            }
            Kind::SniMismatch | Kind::HostMismatch => {
                "the TLS server name, the CONNECT host and the request's Host must name the same allowed destination; do not retry with another name"
            }
            Kind::HandleInvalid
            | Kind::HandleExpired
            | Kind::HandleRevoked
            | Kind::HandleOutOfScope => {
                "the credential handle was refused: ask the sandbox operator for a new handle scoped to this destination; do not retry with the same one"
            }
            Kind::HandleRequired => {
                "this destination only accepts requests that carry a credential handle in the configured header; ask the operator for one"
            }
            Kind::CredentialUnavailable => {
                "the proxy has not received this credential from its secret source yet; retrying later may help, the request was not sent"
            }
            Kind::UpstreamTls => {
                "the upstream's TLS certificate failed verification; this is not fixed by retrying and must not be bypassed"
            }
            Kind::UpstreamConnect => {
                "the upstream could not be reached; retry later or report it if it persists"
            }
            Kind::UpstreamTimeout => "the upstream did not answer in time; retry later",
            Kind::KillSwitch => {
                "all egress from this sandbox is disabled by the operator; do not retry"
            }
            Kind::BadRequest => {
                "the proxy cannot relay this request as sent and retrying it unchanged will not help (detail says why); a client configured with this proxy sends CONNECT for https and absolute-form http:// requests"
            }
            Kind::HeadersTooLarge => {
                "the request's headers are larger than this proxy accepts; retrying the same request will not help: send fewer or smaller headers (cookies, tokens), or ask the operator to raise proxy.max_header_bytes"
            }
            Kind::Overloaded => "the proxy is at its connection limit; retry with backoff",
            Kind::MethodDenied | Kind::PathDenied => {
                "this is policy, not a network fault: this sandbox may not make this request to this destination; do not retry it or rephrase the path to get around the rule; ask the operator"
            }
            Kind::HandleWrongSandbox => {
                "the credential handle was issued to another sandbox and is refused here; use a handle issued to this sandbox and do not retry with this one"
            }
            Kind::ProxyAuthRequired => {
                "send this sandbox's proxy token in Proxy-Authorization (Bearer TOKEN, or Basic with the token as password, e.g. http://SANDBOX:TOKEN@proxy:port); retrying without a valid token will not help"
            }
            Kind::SandboxRequired => {
                "this proxy only serves registered sandboxes and this connection's source address belongs to none; ask the operator to register it"
            }
            Kind::SandboxRemoved => {
                "this sandbox was removed by the operator; its egress has ended, do not retry"
            }
        }
    }
}

impl From<&egress_handle::HandleError> for Kind {
    fn from(e: &egress_handle::HandleError) -> Kind {
        use egress_handle::HandleError as H;
        match e {
            H::Expired => Kind::HandleExpired,
            H::Revoked => Kind::HandleRevoked,
            H::OutOfScope(_) => Kind::HandleOutOfScope,
            _ => Kind::HandleInvalid,
        }
    }
}

impl Refusal {
    pub fn new(kind: Kind, host: impl Into<String>, port: u16, rule: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            host: host.into(),
            port,
            rule: rule.into(),
            cause: None,
            request_id: None,
        }
    }

    pub fn with_cause(mut self, cause: impl Into<String>) -> Refusal {
        self.cause = Some(cause.into());
        self
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    pub fn detail(&self) -> String {
        let dest = format!("{}:{}", self.host, self.port);
        let cause = self.cause.as_deref().unwrap_or("");
        match self.kind {
            Kind::DestinationDenied => {
                format!("{dest} is not allowed by this sandbox's egress policy")
            }
            Kind::AddressDenied => {
                format!("{dest} resolves to an address in a denied range ({cause})")
            }
            Kind::AddressMismatch => {
                format!("the connection to {dest} was addressed to {cause}")
            }
            Kind::SniMismatch => format!(
                "the TLS server name ({cause}) is not covered by the rule that allowed {dest}"
            ),
            Kind::HostMismatch => {
                format!("the request's Host ({cause}) is not covered by the rule for {dest}")
            }
            Kind::HandleInvalid => {
                format!("the credential handle sent to {dest} is not valid ({cause})")
            }
            Kind::HandleExpired => {
                format!("the credential handle sent to {dest} has expired ({cause})")
            }
            Kind::HandleRevoked => {
                format!("the credential handle sent to {dest} was revoked ({cause})")
            }
            Kind::HandleOutOfScope => {
                format!("the credential handle is not scoped to {dest} ({cause})")
            }
            Kind::HandleRequired => {
                format!("{dest} requires a credential handle and none was sent")
            }
            Kind::CredentialUnavailable => {
                format!("the credential for {dest} is not available yet ({cause})")
            }
            Kind::UpstreamTls => format!("TLS to {dest} failed: {cause}"),
            Kind::UpstreamConnect => format!("could not connect to {dest}: {cause}"),
            Kind::UpstreamTimeout => format!("{dest} did not respond in time ({cause})"),
            Kind::KillSwitch => format!(
                "egress is disabled by the operator's kill switch; {dest} was not contacted"
            ),
            Kind::BadRequest => format!("the request cannot be relayed: {cause}"),
            Kind::HeadersTooLarge => {
                format!("the request to {dest} was not forwarded: {cause}")
            }
            Kind::Overloaded if cause.is_empty() => {
                "the proxy is at its connection limit".to_owned()
            }
            Kind::Overloaded => format!("the proxy is at its connection limit ({cause})"),
            Kind::MethodDenied | Kind::PathDenied => {
                format!("the request to {dest} was not forwarded: {cause}")
            }
            Kind::HandleWrongSandbox => {
                format!("the credential handle sent to {dest} belongs to another sandbox ({cause})")
            }
            Kind::ProxyAuthRequired => format!("the proxy did not identify this sandbox: {cause}"),
            Kind::SandboxRequired => format!(
                "no registered sandbox has this connection's source address; {dest} was not contacted"
            ),
            Kind::SandboxRemoved => {
                format!("this sandbox was removed; {dest} was not contacted")
            }
        }
    }
}

#[derive(Serialize)]
struct RefusalBody<'a> {
    error: &'a str,
    host: &'a str,
    port: u16,
    rule: &'a str,
    detail: String,
    hint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The JSON body of a refusal.
pub fn body_json(r: &Refusal) -> String {
    // The host and the cause can quote what the guest sent, which may carry a handle.
    let detail = r.detail();
    let body = RefusalBody {
        error: r.code(),
        host: &egress_handle::redact_in(&r.host),
        port: r.port,
        rule: &r.rule,
        detail: egress_handle::redact_in(&detail).into_owned(),
        hint: r.kind.hint(),
        request_id: r.request_id.as_deref(),
    };
    // Serializing a struct of strings and a u16 cannot fail; keep a valid body regardless.
    serde_json::to_string(&body).unwrap_or_else(|_| format!("{{\"error\":\"{}\"}}", r.code()))
}

impl Kind {
    /// The RFC 9209 `Proxy-Status` error type that fits this refusal.
    pub fn proxy_status_error(self) -> &'static str {
        match self {
            Kind::DestinationDenied
            | Kind::AddressMismatch
            | Kind::SniMismatch
            | Kind::HostMismatch
            | Kind::HandleInvalid
            | Kind::HandleExpired
            | Kind::HandleRevoked
            | Kind::HandleOutOfScope
            | Kind::HandleRequired
            | Kind::KillSwitch
            | Kind::MethodDenied
            | Kind::PathDenied
            | Kind::HandleWrongSandbox
            | Kind::SandboxRequired
            | Kind::SandboxRemoved
            | Kind::ProxyAuthRequired => "http_request_denied",
            Kind::AddressDenied => "destination_ip_prohibited",
            Kind::CredentialUnavailable => "proxy_internal_error",
            Kind::UpstreamTls => "tls_certificate_error",
            Kind::UpstreamConnect => "destination_unavailable",
            Kind::UpstreamTimeout => "connection_timeout",
            Kind::BadRequest | Kind::HeadersTooLarge => "http_request_error",
            Kind::Overloaded => "connection_limit_reached",
        }
    }

    /// Whether sending the same request again can succeed without anyone changing anything.
    /// SDKs that honour `x-should-retry` stop retrying refusals where this is false.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Kind::CredentialUnavailable
                | Kind::UpstreamConnect
                | Kind::UpstreamTimeout
                | Kind::Overloaded
        )
    }

    /// Seconds a client should wait before retrying a 503.
    fn retry_after(self) -> Option<&'static str> {
        match self {
            Kind::Overloaded => Some("1"),
            Kind::CredentialUnavailable => Some("5"),
            _ => None,
        }
    }
}

/// The headers every proxy-generated refusal carries, in order.
pub fn headers(r: &Refusal) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_owned()),
        (ERROR_HEADER, r.code().to_owned()),
        ("cache-control", "no-store".to_owned()),
        (
            "proxy-status",
            format!(
                "egress-edge; error={}; details=\"{}\"",
                r.kind.proxy_status_error(),
                r.code()
            ),
        ),
    ];
    if !r.kind.retryable() {
        h.push(("x-should-retry", "false".to_owned()));
    }
    if let Some(s) = r.kind.retry_after() {
        h.push(("retry-after", s.to_owned()));
    }
    if let Some(id) = &r.request_id {
        h.push(("x-request-id", id.clone()));
    }
    if r.kind == Kind::ProxyAuthRequired {
        h.push((
            "proxy-authenticate",
            "Basic realm=\"egress-edge\"".to_owned(),
        ));
        h.push((
            "proxy-authenticate",
            "Bearer realm=\"egress-edge\"".to_owned(),
        ));
    }
    h
}

/// The guest-facing response for a refusal. The only place refusals become responses.
///
/// Over HTTP/1.1 the reason phrase is the code (`HTTP/1.1 403 destination_denied`): clients
/// that show only the status line of a refused CONNECT still show why.
pub fn respond(r: &Refusal) -> Response<Body> {
    let mut resp = Response::new(full(body_json(r)));
    *resp.status_mut() = r.kind.status();
    for (name, value) in headers(r) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(name, v);
        }
    }
    if r.kind == Kind::Overloaded {
        // Free the guest connection's descriptor at once: the proxy is short of them.
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(r.code().as_bytes()));
    resp
}

/// A raw HTTP/1.1 response for places without a hyper connection (connection limit).
pub fn raw_http1(r: &Refusal) -> Vec<u8> {
    let body = body_json(r);
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.kind.status().as_u16(), r.code());
    for (name, value) in headers(r) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

/// Maps a failure to get response headers from the upstream.
pub fn from_send(e: &SendError, host: &str, port: u16, rule: &str) -> Refusal {
    match e {
        SendError::Client(c) => from_client_error(c, host, port, rule),
        SendError::Timeout(_) => {
            Refusal::new(Kind::UpstreamTimeout, host, port, rule).with_cause(e.to_string())
        }
    }
}

/// Maps a pooled-client failure: our connect error when there is one, else `upstream_connect`
/// with the whole error chain.
pub fn from_client_error(
    e: &(dyn std::error::Error + 'static),
    host: &str,
    port: u16,
    rule: &str,
) -> Refusal {
    match find_connect_error(e) {
        Some(c) => from_connect(c, host, port, rule),
        None => Refusal::new(Kind::UpstreamConnect, host, port, rule).with_cause(error_chain(e)),
    }
}

/// Maps an upstream connection failure to the guest-facing refusal.
pub fn from_connect(e: &ConnectError, host: &str, port: u16, rule: &str) -> Refusal {
    match e {
        ConnectError::Dial(d) => from_dial(d, host, port, rule),
        ConnectError::Tls { cause, .. } => {
            Refusal::new(Kind::UpstreamTls, host, port, rule).with_cause(cause.to_string())
        }
        ConnectError::TlsTimeout { .. } => Refusal::new(Kind::UpstreamTimeout, host, port, rule)
            .with_cause("TLS handshake timed out"),
        ConnectError::BadUri(m) => {
            Refusal::new(Kind::BadRequest, host, port, rule).with_cause(m.clone())
        }
        ConnectError::HostBusy { .. } => {
            Refusal::new(Kind::UpstreamTimeout, host, port, rule).with_cause(e.to_string())
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// EMFILE or ENFILE: the proxy's limit, not the upstream's fault.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::errno::Errno::EMFILE as i32 || code == nix::errno::Errno::ENFILE as i32
    )
}

/// Maps a dial failure (resolution, address vetting, connect) to the guest-facing refusal.
pub fn from_dial(e: &crate::net::dial::DialError, host: &str, port: u16, rule: &str) -> Refusal {
    use crate::net::dial::DialError as D;
    match e {
        D::AddressDenied { denied, .. } => Refusal::new(Kind::AddressDenied, host, port, rule)
            .with_cause(format!("{} is in {}", denied.addr, denied.by)),
        D::AddressMismatch { addr, .. } => Refusal::new(Kind::AddressMismatch, host, port, rule)
            .with_cause(format!(
                "{addr}, which is not an address this proxy resolves the name to"
            )),
        D::Resolve { source, .. } => Refusal::new(Kind::UpstreamConnect, host, port, rule)
            .with_cause(format!("name resolution failed: {source}")),
        D::NoAddress { .. } => Refusal::new(Kind::UpstreamConnect, host, port, rule)
            .with_cause("the name has no address"),
        D::Connect { source, .. } if out_of_descriptors(source) => {
            Refusal::new(Kind::Overloaded, host, port, rule)
                .with_cause("the proxy has no file descriptor left to open the upstream connection")
        }
        D::Connect { addr, source, .. } => Refusal::new(Kind::UpstreamConnect, host, port, rule)
            .with_cause(format!("{addr}: {source}")),
        D::Timeout { timeout, .. } => Refusal::new(Kind::UpstreamTimeout, host, port, rule)
            .with_cause(format!("connect timed out after {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_contract_shape() {
        let r = Refusal::new(Kind::DestinationDenied, "evil.example", 443, "default_rung");
        let v: serde_json::Value = serde_json::from_str(&body_json(&r)).unwrap();
        assert_eq!(v["error"], "destination_denied");
        assert_eq!(v["host"], "evil.example");
        assert_eq!(v["port"], 443);
        assert_eq!(v["rule"], "default_rung");
        assert_eq!(
            v["detail"],
            "evil.example:443 is not allowed by this sandbox's egress policy"
        );
        assert!(v["hint"].as_str().unwrap().contains("do not retry"));
        let resp = respond(&r);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[ERROR_HEADER], "destination_denied");
    }

    #[test]
    fn every_client_can_show_the_refusal() {
        let denied = Refusal::new(Kind::DestinationDenied, "evil.example", 443, "default_rung");
        let resp = respond(&denied);
        let h = resp.headers();
        assert_eq!(
            h["proxy-status"],
            "egress-edge; error=http_request_denied; details=\"destination_denied\""
        );
        assert_eq!(h["x-should-retry"], "false");
        assert!(h.get("retry-after").is_none());
        assert_eq!(
            resp.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes()),
            Some(&b"destination_denied"[..])
        );
        let busy = Refusal::new(Kind::Overloaded, "", 0, "proxy.max_connections");
        let raw = String::from_utf8(raw_http1(&busy)).unwrap();
        assert!(
            raw.starts_with("HTTP/1.1 503 proxy_overloaded\r\n"),
            "{raw}"
        );
        assert!(raw.contains("\r\nretry-after: 1\r\n"), "{raw}");
        assert!(raw.contains("error=connection_limit_reached"), "{raw}");
        assert!(!raw.contains("x-should-retry"), "{raw}");
        let h = respond(&Refusal::new(Kind::CredentialUnavailable, "a", 443, "r"));
        assert!(h.headers().contains_key("retry-after"));
        for kind in [
            Kind::AddressDenied,
            Kind::HandleInvalid,
            Kind::UpstreamTls,
            Kind::KillSwitch,
        ] {
            assert!(!kind.retryable(), "{kind:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(Kind::UpstreamTimeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(Kind::UpstreamTls.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            Kind::CredentialUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Kind::HeadersTooLarge.status().as_u16(), 431);
        assert_eq!(Kind::HeadersTooLarge.code(), "headers_too_large");
    }
}
