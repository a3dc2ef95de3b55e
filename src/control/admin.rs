//! The control plane's admin API (`sds serve --admin ADDR`): the edge's write endpoints for
//! fleet state, acting on [`ControlState`] so that every change is pushed to every connected
//! edge, plus `GET /v1/fleet` (versions per type) and `GET /handle-key.pub` (the issuer's
//! public key, which is not secret).
//!
//! `/v1/*` needs `Authorization: Bearer TOKEN` when `--admin-token-file` is given (required
//! off loopback), and is refused to a foreign `Origin` or a non-JSON write as on an edge. It
//! is HTTP plumbing; what a change means is `state`'s.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::state::{ControlState, Kill};
use crate::admin::{error, guard, json, json_ok, no_content, read_json, text};
use crate::body::Body;
use crate::state::sandboxes::Registration;

/// What the admin handlers share.
pub struct AdminCtx {
    pub state: Arc<ControlState>,
    /// SHA-256 of the admin token, when one is required.
    pub token: Option<[u8; 32]>,
    /// Without a token, `Host` must name loopback or this listener (no DNS rebinding).
    pub transport: guard::AdminTransport,
}

impl std::fmt::Debug for AdminCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCtx")
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until `stop` fires.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminCtx>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (io, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control plane admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| route(req, ctx.clone()));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(io), svc).await;
        });
    }
}

#[allow(clippy::result_large_err)]
fn admit(req: &Request<Incoming>, ctx: &AdminCtx) -> Result<(), Response<Body>> {
    let refuse = |r: guard::Refusal| error(r.status(), r.code(), "refused by the admin guard");
    let authority = guard::request_authority(req);
    guard::check_origin(req.headers(), authority, false).map_err(refuse)?;
    if ctx.token.is_none() {
        guard::check_host(authority, &ctx.transport).map_err(refuse)?;
    }
    if let Some(want) = &ctx.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| ring::digest::digest(&ring::digest::SHA256, t.trim().as_bytes()));
        let ok = presented.is_some_and(|p| bool::from(p.as_ref().ct_eq(want)));
        if !ok {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this control plane's admin API needs Authorization: Bearer <admin token>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Err(r);
        }
    }
    guard::check_media_type(req.method(), req.headers()).map_err(refuse)
}

async fn route(req: Request<Incoming>, ctx: Arc<AdminCtx>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz" | "/readyz") => text(StatusCode::OK, "ok\n", "text/plain"),
        (Method::GET, "/handle-key.pub") => text(
            StatusCode::OK,
            ctx.state.handles().public_key_pem(),
            "application/x-pem-file",
        ),
        (_, p) if p.starts_with("/v1/") => match admit(&req, &ctx) {
            Ok(()) => v1(req, &ctx).await,
            Err(r) => r,
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", "unknown admin path"),
    };
    Ok(resp)
}

/// Runs a state change off the async threads (it writes files).
async fn blocking<T: Send + 'static>(
    ctx: &AdminCtx,
    f: impl FnOnce(&ControlState) -> T + Send + 'static,
) -> Result<T, Response<Body>> {
    let state = ctx.state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            )
        })
}

async fn v1(req: Request<Incoming>, ctx: &AdminCtx) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/fleet") => json(StatusCode::OK, &ctx.state.view()),
        (Method::GET, "/v1/kill-switch") => {
            json(StatusCode::OK, &serde_json::json!(ctx.state.kill()))
        }
        (Method::POST, "/v1/kill-switch") => {
            let kill: Kill = match read_json(req).await {
                Ok(k) => k,
                Err(r) => return r,
            };
            let enabled = kill.enabled;
            match blocking(ctx, move |s| s.set_kill(kill)).await {
                Ok(Ok(())) => {
                    tracing::warn!(
                        enabled,
                        "fleet kill switch set via the control plane's admin API"
                    );
                    json(StatusCode::OK, &serde_json::json!({"enabled": enabled}))
                }
                Ok(Err(e)) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
                Err(r) => r,
            }
        }
        (Method::POST, "/v1/handles") => {
            let body: egress_handle::MintRequest = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match blocking(ctx, move |s| s.mint(&body)).await {
                Ok(Ok(minted)) => {
                    tracing::info!(target: crate::credential::AUDIT_TARGET, id = %minted.id, "handle minted by the control plane");
                    json_ok(&minted)
                }
                Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "bad_request", &e),
                Err(r) => r,
            }
        }
        (Method::POST, "/v1/handles/revoke") => {
            let target: egress_handle::RevokeTarget = match read_json(req).await {
                Ok(t) => t,
                Err(r) => return r,
            };
            let shown = format!("{target:?}");
            match blocking(ctx, move |s| s.revoke(&target)).await {
                Ok(Ok(())) => {
                    tracing::warn!(target: crate::credential::AUDIT_TARGET, revoked = %shown, "revoked fleet-wide");
                    no_content()
                }
                Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
                Err(r) => r,
            }
        }
        (Method::POST, "/v1/sandboxes") => {
            let reg: Registration = match read_json(req).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            match blocking(ctx, move |s| s.register(reg)).await {
                Ok(Ok((sandbox, token))) => {
                    tracing::info!(target: crate::credential::AUDIT_TARGET, sandbox = %sandbox.id, profile = %sandbox.profile, "fleet sandbox registered");
                    let mut v = sandbox.view();
                    if let Some(t) = token {
                        // Shown once; only its hash is kept and published.
                        v["token"] = serde_json::Value::String(t);
                    }
                    json(StatusCode::CREATED, &v)
                }
                Ok(Err(e)) => crate::admin::sandboxes::from_error(&e),
                Err(r) => r,
            }
        }
        (Method::GET, "/v1/sandboxes") => {
            let all: Vec<_> = ctx.state.sandboxes().iter().map(|s| s.view()).collect();
            json(StatusCode::OK, &serde_json::json!({ "sandboxes": all }))
        }
        (method, p) if p.starts_with("/v1/sandboxes/") => {
            let id = p["/v1/sandboxes/".len()..].to_owned();
            match method {
                Method::GET => match ctx.state.sandbox(&id) {
                    Some(s) => json(StatusCode::OK, &s.view()),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        &format!("no sandbox `{id}`"),
                    ),
                },
                Method::DELETE => match blocking(ctx, move |s| s.remove(&id)).await {
                    Ok(Ok(gone)) => {
                        tracing::warn!(target: crate::credential::AUDIT_TARGET, sandbox = %gone.id, "fleet sandbox removed and its handles revoked");
                        no_content()
                    }
                    Ok(Err(super::ControlError::Sandbox(e))) => {
                        crate::admin::sandboxes::from_error(&e)
                    }
                    Ok(Err(e)) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &e.to_string(),
                    ),
                    Err(r) => r,
                },
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
