//! What a refused guest sees: the contract's JSON body and `x-egress-edge-error` header.
//!
//! Every proxy-generated refusal is a [`Refusal`]; the `from_*` functions here are the only
//! mapping from stage errors (dial, connect, send) to refusals, and [`respond`] is the only
//! function that turns one into a guest-facing response, so codes, statuses and wording cannot
//! drift between stages. `detail` and `hint` are written for a person and for an AI agent; they never contain
//! a secret or a whole handle (only the values the stages put in, which are hosts, ports, rule
//! ids, address ranges and handle ids).

use http::{HeaderValue, Response, StatusCode, header};

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
}

/// Refusal codes of the contract, plus the proxy's own request errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    DestinationDenied,
    AddressDenied,
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
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::DestinationDenied => "destination_denied",
            Kind::AddressDenied => "address_denied",
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
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::DestinationDenied
            | Kind::AddressDenied
            | Kind::SniMismatch
            | Kind::HostMismatch
            | Kind::HandleInvalid
            | Kind::HandleExpired
            | Kind::HandleRevoked
            | Kind::HandleOutOfScope
            | Kind::HandleRequired
            | Kind::KillSwitch => StatusCode::FORBIDDEN,
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
            Kind::Overloaded => "the proxy is at its connection limit".to_owned(),
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
}

/// The JSON body of a refusal.
pub fn body_json(r: &Refusal) -> String {
    let body = RefusalBody {
        error: r.code(),
        host: &r.host,
        port: r.port,
        rule: &r.rule,
        detail: r.detail(),
        hint: r.kind.hint(),
    };
    // Serializing a struct of strings and a u16 cannot fail; keep a valid body regardless.
    serde_json::to_string(&body).unwrap_or_else(|_| format!("{{\"error\":\"{}\"}}", r.code()))
}

/// The guest-facing response for a refusal. The only place refusals become responses.
pub fn respond(r: &Refusal) -> Response<Body> {
    let mut resp = Response::new(full(body_json(r)));
    *resp.status_mut() = r.kind.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(r.code()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A raw HTTP/1.1 response for places without a hyper connection (connection limit).
pub fn raw_http1(r: &Refusal) -> Vec<u8> {
    let body = body_json(r);
    let status = r.kind.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{ERROR_HEADER}: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        r.code(),
        body.len(),
        body
    )
    .into_bytes()
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

/// Maps a dial failure (resolution, address vetting, connect) to the guest-facing refusal.
pub fn from_dial(e: &crate::net::dial::DialError, host: &str, port: u16, rule: &str) -> Refusal {
    use crate::net::dial::DialError as D;
    match e {
        D::AddressDenied { denied, .. } => Refusal::new(Kind::AddressDenied, host, port, rule)
            .with_cause(format!("{} is in {}", denied.addr, denied.by)),
        D::Resolve { source, .. } => Refusal::new(Kind::UpstreamConnect, host, port, rule)
            .with_cause(format!("name resolution failed: {source}")),
        D::NoAddress { .. } => Refusal::new(Kind::UpstreamConnect, host, port, rule)
            .with_cause("the name has no address"),
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
