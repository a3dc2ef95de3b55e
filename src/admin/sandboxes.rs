//! `/v1/sandboxes`: register (`POST`), list (`GET`), look up (`GET /v1/sandboxes/{id}`) and
//! remove (`DELETE /v1/sandboxes/{id}`) sandboxes.
//!
//! Removing a sandbox is its kill switch: the registry drops it (persisted first), its open
//! tunnels and bump sessions are cancelled, and every handle bound to it is revoked, so a
//! sandbox later registered under the same id does not inherit them. This module is HTTP
//! plumbing over [`Registry`](crate::state::sandboxes::Registry); it decides nothing itself.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::admin::{error, json, read_json};
use crate::body::Body;
use crate::state::Shared;
use crate::state::sandboxes::{Registration, SandboxError};

pub(crate) fn from_error(e: &SandboxError) -> Response<Body> {
    let (status, code) = match e {
        SandboxError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        SandboxError::Exists(_) => (StatusCode::CONFLICT, "sandbox_exists"),
        SandboxError::FromConfig(_) => (StatusCode::CONFLICT, "sandbox_from_config"),
        SandboxError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        SandboxError::Store { .. } | SandboxError::TokenFile { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    error(status, code, &e.to_string())
}

pub async fn register(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let reg: Registration = match read_json(req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let shared2 = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        let snap = shared2.snapshot();
        shared2.sandboxes.register(reg, &snap.config.policy)
    })
    .await;
    match done {
        Ok(Ok((sandbox, token))) => {
            tracing::info!(target: crate::credential::AUDIT_TARGET, sandbox = %sandbox.id, profile = %sandbox.profile, by_token = token.is_some(), "sandbox registered");
            let mut v = sandbox.view();
            if let Some(t) = token {
                // Shown once; only its hash is kept.
                v["token"] = serde_json::Value::String(t);
            }
            json(StatusCode::CREATED, &v)
        }
        Ok(Err(e)) => from_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

pub fn list(shared: &Shared) -> Response<Body> {
    let all: Vec<_> = shared.sandboxes.list().iter().map(|s| s.view()).collect();
    json(StatusCode::OK, &serde_json::json!({ "sandboxes": all }))
}

pub fn get(shared: &Shared, id: &str) -> Response<Body> {
    match shared.sandboxes.get(id) {
        Some(s) => json(StatusCode::OK, &s.view()),
        None => from_error(&SandboxError::NotFound(id.to_owned())),
    }
}

pub async fn remove(
    shared: &Arc<Shared>,
    handles: &Arc<egress_handle::HandleAuthority>,
    id: &str,
) -> Response<Body> {
    let (shared2, handles, id2) = (shared.clone(), handles.clone(), id.to_owned());
    let done = tokio::task::spawn_blocking(move || {
        let gone = shared2.sandboxes.remove(&id2)?;
        // Fail loudly rather than report a removal whose handles still work.
        handles
            .revoke_sandbox(&gone.id)
            .map_err(|e| SandboxError::Store {
                path: handles.revocations().path().to_path_buf(),
                detail: format!("the sandbox was removed, but revoking its handles failed: {e}"),
            })?;
        Ok::<_, SandboxError>(gone)
    })
    .await;
    match done {
        Ok(Ok(gone)) => {
            tracing::warn!(target: crate::credential::AUDIT_TARGET, sandbox = %gone.id, "sandbox removed: its tunnels and sessions are closed and its handles revoked");
            crate::admin::no_content()
        }
        Ok(Err(e)) => from_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}
