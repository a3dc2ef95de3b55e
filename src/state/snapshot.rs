//! The policy snapshot and the one function that builds it, shared by startup, reload and the
//! secret-source refresh; plus the one check that the CA covers every bump host, shared by
//! startup, reload and `check-config`.
//!
//! A [`Snapshot`] is immutable: a connection that took one keeps the decision it was made
//! with. Building one reads trust roots and constructs upstream clients; it serves nothing.

use std::sync::Arc;

use egress_ca::{DeploymentCa, PermittedName};
use egress_sds::SecretStore;

use crate::config::Config;
use crate::net::dial::{Connect, Dialer, Resolve};
use crate::policy::{HostPattern, Policy};
use crate::upstream::budget::PoolBudget;
use crate::upstream::client::{HttpClient, http_client, tls_client};
use crate::upstream::connector::UpstreamConnector;
use crate::upstream::tls::{self, TrustError};

/// One consistent view of configuration for a connection's lifetime.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub dialer: Dialer,
    /// Pooled plain-HTTP client for absolute-form requests.
    pub plain: HttpClient,
    /// Verified-TLS clients for bumped requests (ALPN h2+http/1.1, and http/1.1 only for
    /// upgrades); `None` when no destination is bumped.
    pub tls: Option<HttpClient>,
    pub tls_h1: Option<HttpClient>,
    pub roots: Option<Arc<rustls::RootCertStore>>,
    /// The process-wide count of open upstream connections (shared by every snapshot).
    pub pool: PoolBudget,
}

/// What a snapshot is built from besides the config: the process's resolver, connector and
/// secret source, fixed at startup.
#[derive(Clone, Debug)]
pub struct Sources {
    pub resolver: Arc<dyn Resolve>,
    pub connector: Arc<dyn Connect>,
    pub secrets: Option<SecretStore>,
    /// Counts upstream connections across snapshots, for `upstream.max_pooled_total`.
    pub pool: PoolBudget,
}

impl Snapshot {
    /// Builds the snapshot for `config`: the dialer, and the upstream clients with trust
    /// roots from files and from the secret source.
    pub fn build(config: Arc<Config>, sources: &Sources) -> Result<Snapshot, TrustError> {
        let dialer = Dialer::new(
            config.network.addresses.clone(),
            config.network.hosts.clone(),
            sources.resolver.clone(),
            sources.connector.clone(),
            config.proxy.connect_timeout,
        );
        let plain = http_client(
            &config,
            UpstreamConnector::new(dialer.clone(), None, config.proxy.handshake_timeout),
            &sources.pool,
        );
        let (mut tls, mut tls_h1, mut roots) = (None, None, None);
        if config.policy.has_bump() {
            let extra_pems = sds_roots(&config, sources.secrets.as_ref());
            let store = Arc::new(tls::root_store(&config.upstream.extra_roots, &extra_pems)?);
            let both = tls::client_config(store.clone(), &[b"h2", b"http/1.1"])?;
            let h1 = tls::client_config(store.clone(), &[b"http/1.1"])?;
            tls = Some(tls_client(&config, &dialer, &sources.pool, both));
            tls_h1 = Some(tls_client(&config, &dialer, &sources.pool, h1));
            roots = Some(store);
        }
        Ok(Snapshot {
            config,
            dialer,
            plain,
            tls,
            tls_h1,
            roots,
            pool: sources.pool.clone(),
        })
    }
}

/// PEM roots delivered as SDS `validation_context` secrets named in `upstream.extra_roots_sds`.
pub fn sds_roots(config: &Config, secrets: Option<&SecretStore>) -> Vec<(String, String)> {
    let Some(store) = secrets else {
        return Vec::new();
    };
    config
        .upstream
        .extra_roots_sds
        .iter()
        .filter_map(|name| {
            let v = store.get(name)?;
            match &*v.secret {
                egress_sds::Secret::ValidationContext { trusted_ca_pem } => {
                    Some((name.clone(), trusted_ca_pem.clone()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Why the CA cannot serve a policy's bump destinations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    #[error("the policy bumps a destination but no CA is loaded")]
    NoCa,
    #[error("the CA ({ca}) is name-constrained and does not cover bump host {pattern}")]
    NotCovered { ca: String, pattern: String },
    #[error("default_rung: bump needs an unconstrained CA, and the CA ({ca}) is name-constrained")]
    OpenEndedBump { ca: String },
}

/// The CA name constraints a generated CA gets for this policy: none (unconstrained) when
/// bumping is open-ended (a bump default rung).
pub fn permitted_names(policy: &Policy) -> Vec<PermittedName> {
    let Some(patterns) = policy.enumerable_bump_patterns() else {
        return Vec::new();
    };
    patterns
        .into_iter()
        .filter_map(|p| match p {
            HostPattern::Exact(n) | HostPattern::Subdomains(n) => {
                Some(PermittedName::Dns(n.clone()))
            }
            HostPattern::Ip(ip) => ip.to_string().parse().ok(),
        })
        .collect()
}

/// Every bump destination of `policy` must get a leaf that guests accept from `ca`: the one
/// check startup, reload and `check-config` share.
pub fn check_ca_coverage(ca: Option<&DeploymentCa>, policy: &Policy) -> Result<(), CoverageError> {
    if !policy.has_bump() {
        return Ok(());
    }
    let Some(ca) = ca else {
        return Err(CoverageError::NoCa);
    };
    let Some(patterns) = policy.enumerable_bump_patterns() else {
        return match ca.permitted_names() {
            Some(_) => Err(CoverageError::OpenEndedBump {
                ca: ca.source().to_owned(),
            }),
            None => Ok(()),
        };
    };
    for p in patterns {
        let covered = match p {
            HostPattern::Exact(n) => ca.covers(n),
            HostPattern::Ip(ip) => ca.covers(&ip.to_string()),
            // Exactly the names strictly below the suffix, at any depth.
            HostPattern::Subdomains(n) => ca.covers_subtree(&PermittedName::Dns(format!(".{n}"))),
        };
        if !covered {
            return Err(CoverageError::NotCovered {
                ca: ca.source().to_owned(),
                pattern: p.to_string(),
            });
        }
    }
    Ok(())
}
