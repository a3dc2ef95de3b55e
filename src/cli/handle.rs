//! `egress-edge handle mint|revoke|keygen`, through the admin API, directly on a state dir,
//! or (mint) offline as an external issuer.
//!
//! With `--state-dir` the CLI signs with the deployment key itself (a running proxy on the same
//! state dir sees revocations within a second). With `--admin` it calls the admin API, sending
//! the token from `EGRESS_EDGE_ADMIN_TOKEN` when set. With `--issuer-key FILE --issuer ID` it
//! signs as that issuer, exactly as `docs/handle-format.md` specifies for any other minter.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;

use crate::cli::admin_client::send;
use crate::cli::{AdminTarget, HandleCommand};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

pub async fn run(cmd: HandleCommand) -> Result<(), CliError> {
    match cmd {
        HandleCommand::Mint {
            credentials,
            ttl,
            session,
            sandbox,
            host,
            methods,
            path_prefixes,
            target,
            issuer,
        } => {
            let ttl_d = humantime::parse_duration(&ttl)
                .map_err(|e| CliError::Usage(format!("--ttl {ttl}: {e}")))?;
            let req = egress_handle::MintRequest {
                credentials,
                ttl: ttl_d,
                session,
                sandbox,
                host,
                methods: (!methods.is_empty()).then_some(methods),
                path_prefixes: (!path_prefixes.is_empty()).then_some(path_prefixes),
            };
            let target = match (target.issuer_key, issuer) {
                (Some(key), Some(issuer)) => {
                    let handle = mint_as_issuer(&key, &issuer, &req)?;
                    println!("{handle}");
                    return Ok(());
                }
                (Some(_), None) => {
                    return Err(CliError::Usage("--issuer-key needs --issuer".into()));
                }
                (None, _) => AdminTarget {
                    admin: target.admin,
                    state_dir: target.state_dir,
                },
            };
            let handle = match target_of(&target)? {
                Target::State(dir) => {
                    let auth = open(&dir)?;
                    auth.mint(&req)
                        .map_err(|e| CliError::Usage(e.to_string()))?
                        .handle
                }
                Target::Admin(url) => {
                    let body = serde_json::json!({
                        "credentials": req.credentials, "ttl": ttl, "session": req.session, "sandbox": req.sandbox, "host": req.host,
                        "methods": req.methods, "path_prefixes": req.path_prefixes,
                    });
                    let v = admin_post(&url, "/v1/handles", body).await?;
                    v["handle"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| CliError::Runtime(format!("unexpected answer: {v}")))?
                }
            };
            println!("{handle}");
            Ok(())
        }
        HandleCommand::Keygen { out } => {
            let mut public = out.clone().into_os_string();
            public.push(".pub");
            let public = std::path::PathBuf::from(public);
            let key = egress_handle::SigningKey::create_issuer_key(&out, &public)
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            eprintln!(
                "wrote {} (private) and {} (public, key id {})",
                out.display(),
                public.display(),
                key.verifying_key().kid_hex()
            );
            Ok(())
        }
        HandleCommand::Revoke {
            id,
            session,
            sandbox,
            target,
        } => {
            let what = match (id, session, sandbox) {
                (Some(i), None, None) => egress_handle::RevokeTarget::Id(i),
                (None, Some(s), None) => egress_handle::RevokeTarget::Session(s),
                (None, None, Some(s)) => egress_handle::RevokeTarget::Sandbox(s),
                _ => {
                    return Err(CliError::Usage(
                        "give exactly one of --id, --session or --sandbox".into(),
                    ));
                }
            };
            match target_of(&target)? {
                Target::State(dir) => open(&dir)?
                    .revoke(&what)
                    .map_err(|e| CliError::Usage(e.to_string())),
                Target::Admin(url) => {
                    let body = match what {
                        egress_handle::RevokeTarget::Id(i) => serde_json::json!({ "id": i }),
                        egress_handle::RevokeTarget::Session(s) => {
                            serde_json::json!({ "session": s })
                        }
                        egress_handle::RevokeTarget::Sandbox(s) => {
                            serde_json::json!({ "sandbox": s })
                        }
                    };
                    admin_post(&url, "/v1/handles/revoke", body)
                        .await
                        .map(|_| ())
                }
            }
        }
    }
}

/// Signs `req` offline with the issuer key in `key_file`. The ttl is bounded by the
/// longest an edge accepts (`handles.max_ttl` at most 7 days); each edge checks its own.
fn mint_as_issuer(
    key_file: &std::path::Path,
    issuer: &str,
    req: &egress_handle::MintRequest,
) -> Result<String, CliError> {
    let key = egress_handle::SigningKey::load_file(key_file)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    egress_handle::mint_as_issuer(
        &key,
        issuer,
        req,
        crate::config::defaults::HANDLE_MAX_TTL_MAX,
        std::time::SystemTime::now(),
    )
    .map(|m| m.handle)
    .map_err(|e| CliError::Usage(e.to_string()))
}

enum Target {
    State(std::path::PathBuf),
    Admin(String),
}

fn target_of(t: &AdminTarget) -> Result<Target, CliError> {
    match (&t.admin, &t.state_dir) {
        (Some(a), None) => Ok(Target::Admin(a.clone())),
        (None, Some(d)) => Ok(Target::State(d.clone())),
        _ => Err(CliError::Usage(
            "give exactly one of --admin or --state-dir".into(),
        )),
    }
}

fn open(dir: &std::path::Path) -> Result<egress_handle::HandleAuthority, CliError> {
    egress_handle::HandleAuthority::open(dir, egress_handle::DEFAULT_MAX_TTL)
        .map_err(|e| CliError::Runtime(e.to_string()))
}

async fn admin_post(
    base: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, CliError> {
    let token = std::env::var("EGRESS_EDGE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    // `send` sets Host to the authority it dials; the admin API refuses any other name.
    let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let (status, text) = tokio::time::timeout(Duration::from_secs(30), send(base, req))
        .await
        .map_err(|_| CliError::Runtime(format!("{base}: timed out")))?
        .map_err(CliError::Runtime)?;
    if !status.is_success() {
        return Err(CliError::Runtime(format!(
            "admin API answered {status}: {text}"
        )));
    }
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| CliError::Runtime(format!("admin API answer: {e}")))
}
