//! Typed configuration: what the rest of the proxy reads.
//!
//! `raw.rs` is the file as written; `load.rs` turns it into these types section by section,
//! applying the defaults named in [`defaults`] and refusing incoherent combinations with errors that name the key. Nothing here
//! opens a socket or reads a secret; files referenced by the config are read by the stage that
//! uses them, at startup, so a missing file still stops `run` before it serves.

pub mod defaults;
pub mod fleet;
mod load;
pub mod raw;
pub mod sandbox;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Serialize;

pub use load::{
    ConfigError, fleet_profile, load_file, parse_fleet_str, parse_str, with_fleet_profiles,
};
pub use raw::{ListenAddr, LogFormat};
pub use sandbox::SandboxConfig;

use crate::net::host::Host;
use crate::net::netguard::AddressPolicy;
use crate::policy::path::PathPattern;
use crate::policy::{Credential, Mode, Policy, RequestMatch, RequestRules, Rule, Rung};

/// The built-in solo configuration `egress-edge run` uses with no `--config`.
pub const BUILTIN_DEFAULT: &str = "\
# egress-edge built-in solo default: public destinations pass through, private ranges are denied.
proxy:
  listen: 127.0.0.1:3128
admin:
  listen: 127.0.0.1:9901
state_dir: ./.egress-edge
network:
  deny: [default]
default_rung: passthrough
";

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub state_dir: PathBuf,
    pub ca: CaConfig,
    pub upstream: UpstreamConfig,
    pub network: NetworkConfig,
    pub secrets: Option<SecretsConfig>,
    #[serde(with = "humantime_serde_compat")]
    pub handle_max_ttl: Duration,
    /// The guest resolver, when configured.
    pub dns: Option<DnsConfig>,
    #[serde(skip)]
    pub policy: Policy,
    /// The destinations as configured, for `/v1/config`.
    pub destinations: Vec<DestinationView>,
    pub default_rung: Rung,
    /// The profiles as configured, for `/v1/config`.
    pub profiles: BTreeMap<String, ProfileView>,
    /// The sandboxes of the config file (the admin API registers more).
    pub sandboxes: Vec<SandboxConfig>,
    /// Sandboxes that get their own `sandbox` metric label; the rest share `other`.
    pub sandbox_metric_labels: usize,
    /// What this edge shares with a fleet (`fleet:`).
    pub fleet: FleetConfig,
}

#[derive(Clone, Debug, Serialize)]
pub struct FleetConfig {
    /// Where the fleet state comes from; `None`: this edge's own admin API and state dir.
    pub source: Option<FleetSource>,
    /// Where writes of fleet state go instead (`fleet.control_plane_admin`).
    pub control_plane_admin: Option<String>,
    /// The issuer this edge mints its handles as (`handles.issuer`).
    pub own_issuer: Option<String>,
    /// External issuers whose handles are accepted.
    pub handle_issuers: Vec<HandleIssuer>,
    /// How long a key dropped from an issuer's SDS-delivered set stays trusted.
    #[serde(with = "humantime_serde_compat")]
    pub rotation_overlap: Duration,
}

/// Where an edge's fleet state (revocations, sandboxes, profiles, kill switch) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetSource {
    /// The `secrets.sds` server, over the aggregated discovery service.
    Sds,
}

/// One external handle issuer: its keys come from a file (read at load time) or from a
/// secret of the secret source (read when delivered).
#[derive(Clone, Debug, Serialize)]
pub struct HandleIssuer {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_sds: Option<String>,
    /// The key ids of the keys in the file (what `/v1/config` shows); empty for SDS.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
    #[serde(skip)]
    pub keys: Vec<egress_handle::VerifyingKey>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProfileView {
    pub mode: Mode,
    pub default_rung: Rung,
    pub destinations: Vec<DestinationView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// The transparent listener, when configured.
    pub transparent: Option<SocketAddr>,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// Connections no sandbox claims are refused.
    pub require_sandbox: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    pub max_label_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    pub listen: ListenAddr,
    pub token_file: Option<PathBuf>,
    pub tls: Option<TlsServerFiles>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaSource {
    /// Generated on first start under `state_dir`.
    Generated,
    /// Bring your own: both files.
    Files { cert: PathBuf, key: PathBuf },
    /// A `tls_certificate` from the secret source, shared by replicas.
    Sds { secret: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaConfig {
    pub source: CaSource,
    #[serde(with = "humantime_serde_compat")]
    pub leaf_ttl: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct UpstreamConfig {
    pub extra_roots: Vec<PathBuf>,
    pub extra_roots_sds: Vec<String>,
    #[serde(with = "humantime_serde_compat")]
    pub response_header_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub pool_idle_timeout: Duration,
    /// Open connections per upstream host and port, per pooled client.
    pub max_connections_per_host: usize,
    /// Idle pooled connections per upstream host and port, per pooled client.
    pub max_idle_per_host: usize,
    /// Open upstream connections, all hosts and clients together, beyond which a new one is
    /// closed after its request instead of pooled.
    pub max_pooled_total: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetworkConfig {
    #[serde(skip)]
    pub addresses: AddressPolicy,
    pub deny: Vec<String>,
    pub allow: Vec<String>,
    /// Static overrides, keyed by normalized name.
    pub hosts: HashMap<String, Vec<IpAddr>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsConfig {
    File {
        path: PathBuf,
        #[serde(with = "humantime_serde_compat")]
        initial_fetch_timeout: Duration,
    },
    Sds(SdsConfig),
}

impl SecretsConfig {
    /// How long a request waits for a referenced secret that has not arrived.
    pub fn initial_fetch_timeout(&self) -> Duration {
        match self {
            SecretsConfig::File {
                initial_fetch_timeout,
                ..
            } => *initial_fetch_timeout,
            SecretsConfig::Sds(s) => s.initial_fetch_timeout,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SdsConfig {
    pub target: String,
    pub tls: Option<SdsTlsFiles>,
    pub node_id: String,
    pub cluster: String,
    #[serde(with = "humantime_serde_compat")]
    pub initial_fetch_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SdsTlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DestinationView {
    pub id: String,
    pub host: String,
    pub ports: Option<Vec<u16>>,
    pub rung: Rung,
    pub credential: Option<Credential>,
    pub require_handle: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<RequestMatchView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RequestMatchView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

impl Config {
    /// The built-in solo default.
    pub fn builtin() -> Result<Config, ConfigError> {
        parse_str(BUILTIN_DEFAULT, "<built-in default>")
    }

    /// Every secret name the config references, for the secret source to subscribe to.
    pub fn referenced_secrets(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .policy
            .all_rules()
            .filter_map(|r| r.credential.as_ref())
            .map(|c| c.secret_name().to_owned())
            .collect();
        if let CaSource::Sds { secret } = &self.ca.source {
            names.insert(secret.clone());
        }
        names.extend(self.upstream.extra_roots_sds.iter().cloned());
        names.extend(
            self.fleet
                .handle_issuers
                .iter()
                .filter_map(|i| i.public_key_sds.clone()),
        );
        names
    }

    /// How long a request (or startup) waits for a referenced secret; 10s with no source.
    pub fn secret_wait(&self) -> Duration {
        self.secrets.as_ref().map_or(
            Duration::from_secs(10),
            SecretsConfig::initial_fetch_timeout,
        )
    }

    /// Resolves a normalized name through `network.hosts`.
    pub fn static_host(&self, host: &Host) -> Option<&[IpAddr]> {
        host.as_name()
            .and_then(|n| self.network.hosts.get(n))
            .map(Vec::as_slice)
    }
}

/// Serialize durations the way they are written in the file.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Builds the typed policy rules from a `destinations` list whose key is `list` (used by
/// `load.rs` for the top level and for each profile).
fn rules_from(
    list: &str,
    destinations: Vec<raw::RawDestination>,
) -> Result<(Vec<Rule>, Vec<DestinationView>), (String, String)> {
    let mut rules = Vec::with_capacity(destinations.len());
    let mut views = Vec::with_capacity(destinations.len());
    let mut seen_ids = BTreeMap::new();
    for (i, d) in destinations.into_iter().enumerate() {
        let key = format!("{list}[{i}]");
        let id = d.id.clone().unwrap_or_else(|| key.clone());
        if let Some(prev) = seen_ids.insert(id.clone(), i) {
            return Err((
                format!("{key}.id"),
                format!("`{id}` is already the id of {list}[{prev}]"),
            ));
        }
        if let Some(ports) = &d.ports
            && (ports.is_empty() || ports.contains(&0))
        {
            return Err((
                format!("{key}.ports"),
                "must list at least one port, each 1-65535".into(),
            ));
        }
        let credential = d
            .credential
            .map(|c| credential_from(c).map_err(|(k, m)| (format!("{key}.credential{k}"), m)))
            .transpose()?;
        let rung = match (d.rung, &credential) {
            (Some(r), _) => r,
            (None, Some(_)) => Rung::Bump,
            (None, None) => Rung::Passthrough,
        };
        if credential.is_some() && rung != Rung::Bump {
            return Err((
                format!("{key}.rung"),
                format!(
                    "a destination with a credential must be bumped (rung: bump), not `{rung}`: a credential cannot be injected into a tunnel the proxy cannot read"
                ),
            ));
        }
        if d.require_handle && credential.is_none() {
            return Err((
                format!("{key}.require_handle"),
                "require_handle needs a credential on the same destination".into(),
            ));
        }
        let requests = requests_from(&key, rung, d.methods, d.paths, d.deny)?;
        views.push(DestinationView {
            id: id.clone(),
            host: d.host.0.to_string(),
            ports: d.ports.clone(),
            rung,
            credential: credential.clone(),
            require_handle: d.require_handle,
            methods: requests.methods.clone(),
            paths: requests
                .paths
                .as_ref()
                .map(|ps| ps.iter().map(ToString::to_string).collect()),
            deny: requests
                .deny
                .iter()
                .map(|m| RequestMatchView {
                    methods: m.methods.clone(),
                    paths: m
                        .paths
                        .as_ref()
                        .map(|ps| ps.iter().map(ToString::to_string).collect()),
                })
                .collect(),
            mode: d.mode,
        });
        rules.push(Rule {
            id: id.into(),
            pattern: d.host.0,
            ports: d.ports,
            rung,
            credential,
            require_handle: d.require_handle,
            requests,
            mode: d.mode,
        });
    }
    Ok((rules, views))
}

/// The request-level rules of destination `key`: only a bump destination's requests can be
/// seen, so anywhere else they are an error rather than a rule that silently never applies.
fn requests_from(
    key: &str,
    rung: Rung,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    deny: Vec<raw::RawRequestMatch>,
) -> Result<RequestRules, (String, String)> {
    let rules = RequestRules {
        methods: methods
            .map(|m| methods_from(&format!("{key}.methods"), m))
            .transpose()?,
        paths: paths
            .map(|p| paths_from(&format!("{key}.paths"), p))
            .transpose()?,
        deny: deny
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let k = format!("{key}.deny[{i}]");
                if m.methods.is_none() && m.paths.is_none() {
                    return Err((
                        k,
                        "a deny entry needs `methods`, `paths` or both (an empty one would refuse every request; use rung: deny for that)".to_owned(),
                    ));
                }
                Ok(RequestMatch {
                    methods: m
                        .methods
                        .map(|v| methods_from(&format!("{k}.methods"), v))
                        .transpose()?,
                    paths: m
                        .paths
                        .map(|v| paths_from(&format!("{k}.paths"), v))
                        .transpose()?,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if !rules.is_empty() && rung != Rung::Bump {
        let which = if rules.methods.is_some() {
            "methods"
        } else if rules.paths.is_some() {
            "paths"
        } else {
            "deny"
        };
        return Err((
            format!("{key}.{which}"),
            format!(
                "`{which}` judges the requests of a bump destination; this one is `{rung}`, whose requests the proxy does not see (set rung: bump)"
            ),
        ));
    }
    Ok(rules)
}

fn methods_from(key: &str, methods: Vec<String>) -> Result<Vec<String>, (String, String)> {
    if methods.is_empty() {
        return Err((key.to_owned(), "list at least one method".into()));
    }
    let mut out: Vec<String> = Vec::with_capacity(methods.len());
    for (i, m) in methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if http::Method::from_bytes(upper.as_bytes()).is_err() || upper.len() > 32 {
            return Err((
                format!("{key}[{i}]"),
                format!("`{m}` is not an HTTP method"),
            ));
        }
        if out.contains(&upper) {
            return Err((format!("{key}[{i}]"), format!("`{m}` is listed twice")));
        }
        out.push(upper);
    }
    Ok(out)
}

fn paths_from(key: &str, paths: Vec<String>) -> Result<Vec<PathPattern>, (String, String)> {
    if paths.is_empty() {
        return Err((key.to_owned(), "list at least one path".into()));
    }
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| PathPattern::parse(p).map_err(|e| (format!("{key}[{i}]"), e)))
        .collect()
}

/// `{ secret, headers: [...], query: NAME }`: the handle swapped in place.
fn swap_from(c: raw::RawCredential) -> Result<Credential, (String, String)> {
    let Some(secret) = c.secret else {
        return Err((
            String::new(),
            "`headers` and `query` belong to a `secret` credential".into(),
        ));
    };
    if c.header.is_some() || c.format.is_some() || c.basic.is_some() {
        return Err((
            ".headers".into(),
            "`headers`/`query` swap the handle in place; they cannot be combined with `header`, `format` or `basic`".into(),
        ));
    }
    let mut headers = Vec::new();
    for (i, h) in c.headers.unwrap_or_default().iter().enumerate() {
        let name = header_name(h).map_err(|(_, m)| (format!(".headers[{i}]"), m))?;
        if headers.contains(&name) {
            return Err((format!(".headers[{i}]"), format!("`{h}` is listed twice")));
        }
        headers.push(name);
    }
    let query = match c.query {
        Some(q)
            if q.is_empty()
                || !q
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) =>
        {
            return Err((
                ".query".into(),
                format!("`{q}` is not a plain query parameter name"),
            ));
        }
        q => q,
    };
    if headers.is_empty() && query.is_none() {
        return Err((
            ".headers".into(),
            "list at least one header, or set `query`".into(),
        ));
    }
    Ok(Credential::Swap {
        secret,
        headers,
        query,
    })
}

fn header_name(s: &str) -> Result<HeaderName, (String, String)> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| {
        (
            ".header".into(),
            format!("`{s}` is not a valid header name"),
        )
    })
}

fn credential_from(c: raw::RawCredential) -> Result<Credential, (String, String)> {
    let kinds = [
        c.secret.is_some(),
        c.oauth2.is_some(),
        c.client_cert.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err((
            String::new(),
            "set exactly one of `secret` (header credential), `oauth2` or `client_cert`".into(),
        ));
    }
    if c.headers.is_some() || c.query.is_some() {
        return swap_from(c);
    }
    if let Some(secret) = c.secret {
        let header = header_name(c.header.as_deref().unwrap_or("authorization"))?;
        let format = match (c.format, c.basic) {
            (Some(_), Some(true)) => {
                return Err((
                    ".basic".into(),
                    "set either `format` or `basic: true`, not both".into(),
                ));
            }
            (Some(f), _) => f,
            (None, Some(true)) => "Basic {secret_base64}".to_owned(),
            (None, _) => "Bearer {secret}".to_owned(),
        };
        let placeholders =
            format.matches("{secret}").count() + format.matches("{secret_base64}").count();
        if placeholders != 1 {
            return Err((
                ".format".into(),
                format!("`{format}` must contain `{{secret}}` or `{{secret_base64}}` exactly once"),
            ));
        }
        return Ok(Credential::Header {
            secret,
            header,
            format,
        });
    }
    if c.header.is_some() || c.format.is_some() || c.basic.is_some() {
        return Err((
            String::new(),
            "`header`, `format` and `basic` belong to a `secret` credential".into(),
        ));
    }
    if let Some(o) = c.oauth2 {
        if !o.token_url.starts_with("https://") && !o.token_url.starts_with("http://") {
            return Err((
                ".oauth2.token_url".into(),
                format!("`{}` is not an http(s) URL", o.token_url),
            ));
        }
        let header = header_name(o.header.as_deref().unwrap_or("authorization"))
            .map_err(|(_, m)| (".oauth2.header".to_owned(), m))?;
        return Ok(Credential::Oauth2 {
            token_url: o.token_url,
            client: o.client,
            scopes: o.scopes,
            header,
        });
    }
    match c.client_cert {
        Some(secret) => Ok(Credential::ClientCert { secret }),
        None => Err((String::new(), "empty credential".into())),
    }
}
