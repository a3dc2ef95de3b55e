//! `egress-edge sds serve` as the control plane of a small fleet: the SDS server for secrets
//! plus the aggregated discovery service (ADS) for the fleet state (revocations, profiles,
//! sandboxes, kill switch), fed from a watched fleet file and from its own admin API, so a
//! change made there reaches every connected edge.
//!
//! Without `--state-dir` it is the plain secrets server: no fleet types are served. It does not forward anything to edges' admin APIs and keeps no edge state: edges
//! pull over their stream.

pub mod admin;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use egress_sds::fleet::Published;
use egress_sds::server::{ServeOptions, Server};
use tokio_util::sync::CancellationToken;

use crate::state::sandboxes::SandboxError;

/// How often the fleet file and the revocation list are looked at for outside changes.
const POLL: Duration = Duration::from_millis(500);

/// Why the control plane cannot start or a change failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Usage(String),
    #[error("fleet file: {0}")]
    FleetFile(String),
    #[error("state dir: {0}")]
    State(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Sds(#[from] egress_sds::SdsError),
    #[error("admin listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything `sds serve` takes.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub serve: ServeOptions,
    /// Profiles and sandboxes for every edge (the `profiles`/`sandboxes` sections of a config).
    pub fleet_file: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// TTL of grants (profiles, sandboxes); `None`: they never lapse on a cut-off edge.
    pub grant_ttl: Option<Duration>,
    /// The issuer id handles minted here carry.
    pub issuer: String,
    pub handle_max_ttl: Duration,
}

impl ControlOptions {
    /// Refuses combinations that would run more open than asked.
    fn check(&self) -> Result<(), ControlError> {
        if (self.admin.is_some() || self.fleet_file.is_some()) && self.state_dir.is_none() {
            return Err(ControlError::Usage(
                "--admin and --fleet need --state-dir: revocations, sandboxes, the kill switch and \
                 the handle issuer key must survive a restart"
                    .into(),
            ));
        }
        if let Some(addr) = self.admin
            && !addr.ip().is_loopback()
            && self.admin_token_file.is_none()
        {
            return Err(ControlError::Usage(format!(
                "--admin {addr} is not loopback: it needs --admin-token-file (anyone reaching it \
                 could lift revocations' effect by registering sandboxes or minting handles)"
            )));
        }
        if self.admin_token_file.is_some() && self.admin.is_none() {
            return Err(ControlError::Usage(
                "--admin-token-file without --admin".into(),
            ));
        }
        if self.grant_ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err(ControlError::Usage(
                "--grant-ttl must be at least 1s (or 0 for none)".into(),
            ));
        }
        Ok(())
    }
}

fn read_token(path: &std::path::Path) -> Result<[u8; 32], ControlError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bad =
        |d: String| ControlError::Usage(format!("--admin-token-file {}: {d}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad("readable by group or others; chmod 600 it".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(bad("the token must be at least 16 characters".into()));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    Ok(out)
}

/// Binds everything (errors here mean "refuse to start"), then serves until `shutdown`.
pub async fn serve(
    opts: ControlOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControlError> {
    opts.check()?;
    let published = Published::new();
    // The heartbeat re-sends grants well within their TTL, so one lost push does not lapse them.
    let heartbeat = opts.grant_ttl.map_or(Duration::from_secs(60), |t| {
        (t / 3).max(Duration::from_millis(300))
    });
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    if let Some(dir) = &opts.state_dir {
        let (dir, file, issuer) = (dir.clone(), opts.fleet_file.clone(), opts.issuer.clone());
        let (ttl, grant, published2) = (opts.handle_max_ttl, opts.grant_ttl, published.clone());
        let state = Arc::new(
            tokio::task::spawn_blocking(move || {
                state::ControlState::open(&dir, file.as_deref(), &issuer, ttl, grant, published2)
            })
            .await
            .map_err(|e| ControlError::State(e.to_string()))??,
        );
        tracing::info!(
            issuer = %opts.issuer,
            key_id = %state.handles().kid(),
            public_key = %state.handles().state_dir().join(egress_handle::PUBLIC_KEY_FILE).display(),
            "control plane state loaded"
        );
        spawn_pollers(state.clone(), stop.clone());
        if let Some(addr) = opts.admin {
            let token = opts
                .admin_token_file
                .as_deref()
                .map(read_token)
                .transpose()?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ControlError::Bind { addr, source })?;
            tracing::info!(%addr, "control plane admin API listening");
            let transport = crate::admin::guard::AdminTransport::Tcp {
                addrs: vec![addr.ip()],
            };
            let ctx = Arc::new(admin::AdminCtx {
                state,
                token,
                transport,
            });
            tokio::spawn(admin::serve(listener, ctx, stop.clone()));
        }
    }
    let mut server = Server::bind(&opts.serve).await?;
    // Without a state dir there is no fleet state: the fleet types are not served at all, so
    // a fleet edge pointed here stays unready instead of taking an empty state (no kill
    // switch, no sandboxes) for the real one.
    if opts.state_dir.is_some() {
        server = server.with_fleet(published, heartbeat);
    }
    server.run(shutdown).await.map_err(ControlError::from)
}

/// Watches the fleet file and the revocation list for changes made outside the admin API.
fn spawn_pollers(state: Arc<state::ControlState>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let s = state.clone();
            let Ok(result) = tokio::task::spawn_blocking(move || {
                s.reload_revocations();
                s.reload_file()
            })
            .await
            else {
                continue;
            };
            match result {
                Ok(true) => {
                    last_error = None;
                    tracing::info!("fleet file changed; new profiles and sandboxes published");
                }
                Ok(false) => {}
                Err(e) if last_error.as_deref() != Some(e.as_str()) => {
                    tracing::error!(error = %e, "fleet file change rejected; the last good version stays published");
                    last_error = Some(e);
                }
                Err(_) => {}
            }
        }
    });
}
