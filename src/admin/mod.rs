//! The admin listener: health, readiness, metrics, the CA certificate, and the `/v1` API.
//!
//! Fails closed: a token file must be non-empty and not world-readable; TLS material must be
//! complete; a non-loopback TCP listener needs a token or mTLS. `/v1/*` requires the token
//! (constant-time comparison) or a verified client certificate whenever either is configured.
//! Every `/v1/*` request also passes the browser defences in [`guard`] (foreign `Origin`,
//! rebound `Host`, non-JSON writes are refused). This module does not proxy traffic.

pub mod api;
pub mod guard;
pub(crate) mod sandboxes;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::body::{Body, full};
use crate::config::{AdminConfig, ListenAddr};
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.token_file: {0}")]
    Token(String),
    #[error("admin.tls: {0}")]
    Tls(String),
    #[error("admin.tls: {0}")]
    Pem(#[from] crate::pem::PemError),
    #[error("admin.listen: {0}")]
    Listen(String),
}

/// Admin authentication material, loaded at startup.
pub struct AdminAuth {
    token: Option<Vec<u8>>,
    tls: Option<TlsAcceptor>,
    mtls: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("mtls", &self.mtls)
            .finish()
    }
}

impl AdminAuth {
    pub fn load(cfg: &AdminConfig) -> Result<AdminAuth, AdminError> {
        let token = match &cfg.token_file {
            None => None,
            Some(p) => Some(read_token(p)?),
        };
        let (tls, mtls) = match &cfg.tls {
            None => (None, false),
            Some(t) => {
                let certs = crate::pem::certs(&t.cert)?;
                let key = crate::pem::key(&t.key)?;
                let provider = crate::crypto::provider();
                let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| AdminError::Tls(e.to_string()))?;
                let builder = match &t.client_ca {
                    None => builder.with_no_client_auth(),
                    Some(ca) => {
                        let mut roots = rustls::RootCertStore::empty();
                        for c in crate::pem::certs(ca)? {
                            roots.add(c).map_err(|e| {
                                AdminError::Tls(format!("client_ca {}: {e}", ca.display()))
                            })?;
                        }
                        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider,
                        )
                        // Probes and scrapers connect without a certificate; `/v1/*` still
                        // requires one (or the token) in `authorize`.
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| AdminError::Tls(format!("client_ca: {e}")))?;
                        builder.with_client_cert_verifier(verifier)
                    }
                };
                let mut sc = builder
                    .with_single_cert(certs, key)
                    .map_err(|e| AdminError::Tls(format!("cert/key: {e}")))?;
                sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                (Some(TlsAcceptor::from(Arc::new(sc))), t.client_ca.is_some())
            }
        };
        if let ListenAddr::Tcp(addr) = &cfg.listen
            && !addr.ip().is_loopback()
            && token.is_none()
            && !mtls
        {
            return Err(AdminError::Listen(format!(
                "{addr} is not loopback: set admin.token_file or admin.tls.client_ca before exposing the admin API"
            )));
        }
        Ok(AdminAuth { token, tls, mtls })
    }

    fn required(&self) -> bool {
        self.token.is_some() || self.mtls
    }
}

fn read_token(p: &Path) -> Result<Vec<u8>, AdminError> {
    let meta =
        std::fs::metadata(p).map_err(|e| AdminError::Token(format!("{}: {e}", p.display())))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(AdminError::Token(format!(
            "{} is world-readable; chmod o-r it (the token guards handle minting)",
            p.display()
        )));
    }
    let raw = std::fs::read_to_string(p)
        .map_err(|e| AdminError::Token(format!("{}: {e}", p.display())))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(AdminError::Token(format!("{} is empty", p.display())));
    }
    if token.len() < 16 {
        return Err(AdminError::Token(format!(
            "{}: the token must be at least 16 characters",
            p.display()
        )));
    }
    Ok(token.as_bytes().to_vec())
}

/// What the admin service needs.
#[derive(Debug)]
pub struct AdminCtx {
    pub shared: Arc<Shared>,
    pub auth: AdminAuth,
    pub ready: AtomicBool,
    pub api: crate::admin::api::Api,
    /// TCP or unix socket, and the addresses a `Host` header may name.
    pub transport: guard::AdminTransport,
}

/// Serves one admin connection (TLS or not).
/// Any admin connection stream (TCP or unix socket).
pub trait AdminStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AdminStream for T {}

pub async fn serve_conn<IO>(io: IO, ctx: Arc<AdminCtx>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(acceptor) = ctx.auth.tls.clone() {
        let tls =
            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(io))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    ctx.shared
                        .metrics
                        .admin_auth_failures
                        .get_or_create(&crate::observe::metrics::CodeLabel { code: "tls".into() })
                        .inc();
                    tracing::warn!(error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
        let has_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        serve_http(TokioIo::new(tls), ctx, has_cert).await;
    } else {
        serve_http(TokioIo::new(io), ctx, false).await;
    }
}

async fn serve_http<IO>(io: TokioIo<IO>, ctx: Arc<AdminCtx>, client_cert: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| route(req, ctx.clone(), client_cert));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

pub(crate) fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    ctype: &'static str,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// 204, for writes that have nothing to return.
pub(crate) fn no_content() -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// `v` as a JSON 200, or a 500 if it does not serialize.
pub(crate) fn json_ok<T: serde::Serialize>(v: &T) -> Response<Body> {
    match serde_json::to_value(v) {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    text(status, v.to_string(), "application/json")
}

pub fn error(status: StatusCode, code: &str, detail: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": code, "detail": detail}),
    )
}

async fn route(
    req: Request<Incoming>,
    ctx: Arc<AdminCtx>,
    client_cert: bool,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n", "text/plain"),
        (Method::GET, "/readyz") => readyz(&ctx),
        (Method::GET, "/metrics") => text(
            StatusCode::OK,
            ctx.api.metrics_text(&ctx.shared),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (Method::GET, "/ca.pem") => {
            text(StatusCode::OK, ctx.api.ca_pem(), "application/x-pem-file")
        }
        (_, p) if p.starts_with("/v1/") => {
            if let Err(resp) = admit(&req, &ctx, client_cert) {
                return Ok(resp);
            }
            v1(req, &ctx).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "unknown admin path"),
    };
    Ok(resp)
}

fn readyz(ctx: &AdminCtx) -> Response<Body> {
    let listeners = ctx.ready.load(Ordering::SeqCst);
    let secrets = ctx.api.secrets_ready();
    let draining = ctx.shared.draining.is_cancelled();
    let fleet_missing = ctx
        .shared
        .fleet
        .as_ref()
        .map(|f| f.missing())
        .unwrap_or_default();
    if listeners && secrets && fleet_missing.is_empty() && !draining {
        text(StatusCode::OK, "ready\n", "text/plain")
    } else {
        let why = if draining {
            "draining: shutting down, no new connections".to_owned()
        } else if !listeners {
            "listeners not yet serving".to_owned()
        } else if !secrets {
            "secrets not yet delivered".to_owned()
        } else {
            format!(
                "no acknowledged version yet from the control plane for: {}",
                fleet_missing.join(", ")
            )
        };
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
            "text/plain",
        )
    }
}

/// How a `/v1` request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Authorized {
    /// No authentication is configured: the request is trusted for where it came from.
    Open,
    /// A bearer token or a verified client certificate, neither of which a web page can
    /// present on its own.
    Credential,
}

/// The gate in front of `/v1/*`: `Origin`, then authentication, then `Host`, then the media
/// type. A foreign `Origin` is refused however the request is authenticated; the `Host`
/// check only applies to requests no credential vouches for (a rebound page has none, and a
/// remote operator with the token may use any name for the listener).
#[allow(clippy::result_large_err)]
fn admit(req: &Request<Incoming>, ctx: &AdminCtx, client_cert: bool) -> Result<(), Response<Body>> {
    let authority = guard::request_authority(req);
    guard::check_origin(req.headers(), authority, ctx.auth.tls.is_some())
        .map_err(|r| refuse(req, ctx, r))?;
    if authorize(req, ctx, client_cert)? == Authorized::Open {
        guard::check_host(authority, &ctx.transport).map_err(|r| refuse(req, ctx, r))?;
    }
    guard::check_media_type(req.method(), req.headers()).map_err(|r| refuse(req, ctx, r))
}

fn refuse(req: &Request<Incoming>, ctx: &AdminCtx, why: guard::Refusal) -> Response<Body> {
    if why != guard::Refusal::NotJson {
        ctx.shared
            .metrics
            .admin_auth_failures
            .get_or_create(&crate::observe::metrics::CodeLabel {
                code: why.code().into(),
            })
            .inc();
        tracing::warn!(
            reason = why.code(),
            path = %req.uri().path(),
            origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or(""),
            host = guard::request_authority(req).unwrap_or(""),
            "admin API request refused"
        );
    }
    error(why.status(), why.code(), &why.to_string())
}

#[allow(clippy::result_large_err)]
fn authorize(
    req: &Request<Incoming>,
    ctx: &AdminCtx,
    client_cert: bool,
) -> Result<Authorized, Response<Body>> {
    if client_cert {
        return Ok(Authorized::Credential);
    }
    if !ctx.auth.required() {
        return Ok(Authorized::Open);
    }
    let fail = |code: &str, status: StatusCode, detail: &str| {
        ctx.shared
            .metrics
            .admin_auth_failures
            .get_or_create(&crate::observe::metrics::CodeLabel { code: code.into() })
            .inc();
        tracing::warn!(reason = code, path = %req.uri().path(), "admin API authentication failed");
        let mut r = error(status, code, detail);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(expected) = &ctx.auth.token else {
        return Err(fail(
            "client_cert_required",
            StatusCode::UNAUTHORIZED,
            "a client certificate is required",
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    match presented {
        None => Err(fail(
            "token_missing",
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <admin token>",
        )),
        Some(t) if bool::from(t.trim().as_bytes().ct_eq(expected)) => Ok(Authorized::Credential),
        Some(_) => Err(fail(
            "token_invalid",
            StatusCode::FORBIDDEN,
            "the admin token is not valid",
        )),
    }
}

/// Reads a small JSON body.
pub async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                "body too large or unreadable",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))
}

/// Writes of state that a control plane owns on a fleet edge (`fleet.source`), named for the
/// answer.
fn fleet_owned(method: &Method, path: &str) -> Option<&'static str> {
    match (method, path) {
        (&Method::POST, "/v1/kill-switch") => Some("the kill switch is"),
        (&Method::POST, "/v1/handles/revoke") => Some("revocations are"),
        (&Method::POST, "/v1/sandboxes") => Some("sandboxes are"),
        (&Method::DELETE, p) if p.starts_with("/v1/sandboxes/") => Some("sandboxes are"),
        _ => None,
    }
}

/// 409: on a fleet edge the control plane owns `what`; a local write would be overwritten by
/// its next push, or split the fleet.
fn fleet_conflict(what: &str, fleet: &crate::state::fleet_status::FleetStatus) -> Response<Body> {
    let to = fleet
        .admin_url
        .as_deref()
        .map_or_else(String::new, |u| format!(" at {u}"));
    json(
        StatusCode::CONFLICT,
        &serde_json::json!({
            "error": "fleet_managed",
            "detail": format!(
                "on this edge {what} managed by the control plane (fleet.source: sds) and cannot \
                 be changed here: send the same request to the control plane's admin API{to}"
            ),
            "control_plane": fleet.target,
            "control_plane_admin": fleet.admin_url,
        }),
    )
}

async fn v1(req: Request<Incoming>, ctx: &AdminCtx) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let (Some(fleet), Some(what)) = (&ctx.shared.fleet, fleet_owned(req.method(), &path)) {
        return fleet_conflict(what, fleet);
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/config") => ctx.api.config_json(&ctx.shared),
        (Method::POST, "/v1/kill-switch") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Kill {
                enabled: bool,
            }
            match read_json::<Kill>(req).await {
                Ok(k) => {
                    ctx.shared.kill.set(k.enabled);
                    tracing::warn!(enabled = k.enabled, "kill switch set via admin API");
                    json(StatusCode::OK, &serde_json::json!({"enabled": k.enabled}))
                }
                Err(r) => r,
            }
        }
        (Method::GET, "/v1/kill-switch") => json(
            StatusCode::OK,
            &serde_json::json!({"enabled": ctx.shared.kill.is_enabled()}),
        ),
        (Method::POST, "/v1/handles") => ctx.api.mint_handle(req, &ctx.shared).await,
        (Method::POST, "/v1/handles/revoke") => ctx.api.revoke_handle(req).await,
        (Method::POST, "/v1/sandboxes") => sandboxes::register(req, &ctx.shared).await,
        (Method::GET, "/v1/sandboxes") => sandboxes::list(&ctx.shared),
        (method, p) if p.starts_with("/v1/sandboxes/") => {
            let id = &p["/v1/sandboxes/".len()..];
            match method {
                Method::GET => sandboxes::get(&ctx.shared, id),
                Method::DELETE => sandboxes::remove(&ctx.shared, ctx.api.handles(), id).await,
                _ => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET or DELETE on /v1/sandboxes/{id}",
                ),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "unknown admin path"),
    }
}
