//! The subscribing SDS client used by the proxy: options and their validation, target parsing,
//! and the task that keeps a [`SecretStore`] in sync with an SDS server.
//!
//! It does not serve anything and never drops a secret it already holds: across NACKs,
//! disconnects and server restarts the last good values stay in the store.

pub mod ads;
mod connect;
pub(crate) mod session;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use ads::{FleetOptions, FleetSink, Why, spawn_fleet_client};

use crate::error::SdsError;
use crate::store::SecretStore;

/// Where the SDS server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix:///path` (e.g. the SPIRE or Istio agent socket).
    Unix(PathBuf),
    /// `https://host:port`.
    Https { host: String, port: u16 },
    /// `http://host:port`, loopback hosts only.
    Http { host: String, port: u16 },
}

const TARGET_FORMS: &str =
    "use unix:///path, https://host:port, or http://127.0.0.1:port (plaintext: loopback only)";

impl Target {
    pub fn parse(s: &str) -> Result<Self, SdsError> {
        let bad = |reason: String| SdsError::Target {
            target: s.to_string(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(bad(format!(
                    "a unix socket needs an absolute path; {TARGET_FORMS}"
                )));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|_| bad(format!("not a URI; {TARGET_FORMS}")))?;
        let scheme = uri.scheme_str().unwrap_or_default();
        if scheme != "https" && scheme != "http" {
            return Err(bad(format!("unsupported scheme; {TARGET_FORMS}")));
        }
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        {
            return Err(bad(
                "a path or query is not allowed; give only host:port".into()
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad(format!("missing host; {TARGET_FORMS}")))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URI are not allowed".into()));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad(format!("missing host; {TARGET_FORMS}")));
        }
        if scheme == "https" {
            let port = authority.port_u16().unwrap_or(443);
            return Ok(Target::Https { host, port });
        }
        if !is_loopback(&host) {
            return Err(bad(format!(
                "plaintext http:// is only allowed to a loopback address (127.0.0.0/8, ::1, \
                 localhost), because SDS carries credentials; use https:// for {host}"
            )));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Target::Http { host, port })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bracket = |h: &str| {
            if h.contains(':') {
                format!("[{h}]")
            } else {
                h.to_string()
            }
        };
        match self {
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Https { host, port } => write!(f, "https://{}:{port}", bracket(host)),
            Target::Http { host, port } => write!(f, "http://{}:{port}", bracket(host)),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// TLS material for `https://` targets. Without `ca` the system roots are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Everything the client needs (the `secrets.sds` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub target: Target,
    pub tls: Option<ClientTls>,
    /// Sent as `node.id`; must not be empty (servers such as Istio's reject an empty node).
    pub node_id: String,
    /// Sent as `node.cluster`; empty means `egress-edge`.
    pub cluster: String,
    /// Exactly the secret names the proxy references.
    pub names: Vec<String>,
    /// After this, a still-missing secret is logged and readiness stops waiting for it.
    pub initial_fetch_timeout: Duration,
}

/// `node.cluster` when none is configured.
pub const DEFAULT_CLUSTER: &str = "egress-edge";

impl ClientOptions {
    /// Refuses settings that would silently weaken or break the connection.
    pub fn validate(&self) -> Result<(), SdsError> {
        let fail = |m: &str| Err(SdsError::Config(format!("secrets.sds: {m}")));
        if self.node_id.trim().is_empty() {
            return fail("node_id must not be empty");
        }
        if self.names.is_empty() {
            return fail("no secret names to subscribe to");
        }
        if self.names.iter().any(String::is_empty) {
            return fail("secret names must not be empty");
        }
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        match &self.target {
            Target::Http { .. } => {
                return fail("tls is set but the target is plaintext http://; use https://");
            }
            Target::Unix(_) => {
                return fail(
                    "tls is not supported on unix:// targets (the socket's file permissions protect it)",
                );
            }
            Target::Https { .. } => {}
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => fail("tls.cert is set without tls.key (partial mTLS settings)"),
            (None, Some(_)) => fail("tls.key is set without tls.cert (partial mTLS settings)"),
            _ => Ok(()),
        }
    }
}

/// Validates the options, loads the TLS material (so a bad file fails at startup), and
/// spawns the task that subscribes and keeps `store` current until aborted.
pub fn spawn_client(opts: ClientOptions, store: SecretStore) -> Result<JoinHandle<()>, SdsError> {
    opts.validate()?;
    let connector = connect::Connector::new(&opts.target, opts.tls.as_ref())?;
    let timeout = opts.initial_fetch_timeout;
    let watcher = store.clone();
    let names = opts.names.clone();
    Ok(tokio::spawn(async move {
        let fetch_deadline = async {
            tokio::time::sleep(timeout).await;
            let snap = watcher.snapshot();
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| !snap.secrets.contains_key(*n))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    ?missing,
                    ?timeout,
                    "secrets not delivered within initial_fetch_timeout; requests needing them get credential_unavailable"
                );
            }
            std::future::pending::<()>().await;
        };
        tokio::join!(session::run(opts, connector, store), fetch_deadline);
    }))
}
