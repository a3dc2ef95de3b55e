//! The config file as written: serde structs with `deny_unknown_fields`.
//!
//! Leaf values that have a shape (durations, CIDRs, host patterns, listen addresses) are parsed
//! during deserialization so the YAML parser can point at the line. Cross-field rules (both or
//! neither, references between sections) are checked in `load.rs`, not here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::net::netguard;
use crate::policy::{HostPattern, Mode, Rung};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub ca: RawCa,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub network: RawNetwork,
    pub secrets: Option<RawSecrets>,
    #[serde(default)]
    pub handles: RawHandles,
    #[serde(default)]
    pub fleet: RawFleet,
    pub dns: Option<RawDns>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
    pub default_rung: Option<Rung>,
    /// Named sets of destinations that sandboxes run under.
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
    /// Sandboxes known from the config (more can be registered over the admin API).
    #[serde(default)]
    pub sandboxes: Vec<RawSandbox>,
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// A profile: destinations in the top-level shape, its own default rung and mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub mode: Option<Mode>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
    /// Default `deny`.
    pub default_rung: Option<Rung>,
}

/// A sandbox from the config: identified by source addresses or by a proxy token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    pub id: String,
    pub profile: String,
    #[serde(default)]
    pub sources: Vec<NetEntry>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Sandboxes that get their own `sandbox` label value; the rest share `other`.
    pub sandbox_labels: Option<usize>,
}

/// Shared state of a fleet of edges.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// Where revocations, sandboxes, profiles and the kill switch come from (`sds`: the
    /// `secrets.sds` server, over ADS).
    pub source: Option<RawFleetSource>,
    /// The control plane's admin API (http(s)://host:port), named in this edge's 409 answers.
    pub control_plane_admin: Option<String>,
    /// External issuers whose handles this edge accepts.
    #[serde(default)]
    pub handle_issuers: Vec<RawIssuer>,
    /// How long a key dropped from an issuer's SDS-delivered set stays trusted.
    pub rotation_overlap: Option<Dur>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawFleetSource {
    Sds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub id: String,
    /// A PEM file of one or more Ed25519 `PUBLIC KEY` blocks (several while a key rotates).
    pub public_key: Option<PathBuf>,
    /// Or: the name of a generic secret from the secret source holding such PEM text.
    pub public_key_sds: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandles {
    /// Longest lifetime a handle may be minted with (default 1h).
    pub max_ttl: Option<Dur>,
    /// Mint as this issuer, so other edges listing it (with this edge's key) accept them.
    pub issuer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<SocketAddr>,
    /// Where TCP redirected by nftables (REDIRECT/DNAT) arrives.
    pub transparent: Option<SocketAddr>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub handshake_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub shutdown_grace: Option<Dur>,
    /// Refuse connections that no sandbox claims (407 on the explicit listener).
    #[serde(default)]
    pub require_sandbox: bool,
}

/// The guest resolver (`dns:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub listen: SocketAddr,
    /// TTL of the answers given to guests (default 30s).
    pub ttl: Option<Dur>,
    /// Longest label answered for a name not named exactly by a rule (default 40).
    pub max_label_len: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<ListenAddr>,
    pub token_file: Option<PathBuf>,
    pub tls: Option<RawTlsFiles>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// Trust roots for a TLS client (SDS): `ca`.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCa {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub sds: Option<String>,
    pub leaf_ttl: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub extra_roots: Vec<PathBuf>,
    /// SDS `validation_context` secret names trusted as extra roots.
    #[serde(default)]
    pub extra_roots_sds: Vec<String>,
    pub response_header_timeout: Option<Dur>,
    pub pool_idle_timeout: Option<Dur>,
    pub max_connections_per_host: Option<usize>,
    pub max_idle_per_host: Option<usize>,
    pub max_pooled_total: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub deny: Option<Vec<DenyEntry>>,
    #[serde(default)]
    pub allow: Vec<NetEntry>,
    #[serde(default)]
    pub hosts: BTreeMap<String, OneOrMany<IpAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    pub file: Option<PathBuf>,
    pub sds: Option<RawSds>,
    /// For `file`: how long a request waits for a secret missing from the file (default 1s).
    pub initial_fetch_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSds {
    pub target: String,
    pub tls: Option<RawTlsFiles>,
    pub node_id: Option<String>,
    pub cluster: Option<String>,
    pub initial_fetch_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub id: Option<String>,
    pub host: HostPatternDe,
    pub ports: Option<Vec<u16>>,
    pub rung: Option<Rung>,
    pub credential: Option<RawCredential>,
    #[serde(default)]
    pub require_handle: bool,
    /// Bump destinations: allowed methods.
    pub methods: Option<Vec<String>>,
    /// Bump destinations: allowed path patterns (segment prefixes, `*` for one segment).
    pub paths: Option<Vec<String>>,
    /// Bump destinations: requests refused even when methods and paths allow them.
    #[serde(default)]
    pub deny: Vec<RawRequestMatch>,
    /// This destination's mode (`enforce` or `report`), overriding its profile's.
    pub mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestMatch {
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub secret: Option<String>,
    /// Headers the handle is swapped in place in (`[x-api-key, authorization]`).
    pub headers: Option<Vec<String>>,
    /// The query parameter the handle is swapped in.
    pub query: Option<String>,
    pub header: Option<String>,
    pub format: Option<String>,
    /// For `basic`: the generic secret's key holding the user (default `username`).
    pub basic: Option<bool>,
    pub oauth2: Option<RawOauth2>,
    pub client_cert: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOauth2 {
    pub token_url: String,
    pub client: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub header: Option<String>,
}

/// A duration written as `10s`, `15m`, `24h`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. 10s, 15m, 24h"
            ))
        })
    }
}

/// A host pattern parsed at load time.
#[derive(Clone, Debug)]
pub struct HostPatternDe(pub HostPattern);

impl<'de> Deserialize<'de> for HostPatternDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPattern::parse(&s).map(HostPatternDe).map_err(|e| {
            de::Error::custom(format!(
                "invalid host pattern: {e}; allowed: a DNS name, `*.suffix`, or an IP address"
            ))
        })
    }
}

/// A CIDR or bare address.
#[derive(Clone, Copy, Debug)]
pub struct NetEntry(pub IpNet);

impl<'de> Deserialize<'de> for NetEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        netguard::parse_net(&s)
            .map(NetEntry)
            .ok_or_else(|| de::Error::custom(format!("`{s}` is not a CIDR or IP address")))
    }
}

/// `default` (the built-in group) or a CIDR.
#[derive(Clone, Copy, Debug)]
pub enum DenyEntry {
    Default,
    Net(IpNet),
}

impl<'de> Deserialize<'de> for DenyEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "default" {
            return Ok(DenyEntry::Default);
        }
        netguard::parse_net(&s).map(DenyEntry::Net).ok_or_else(|| {
            de::Error::custom(format!("`{s}` is not `default`, a CIDR or an IP address"))
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Where a listener binds: `host:port` or `unix:///path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: a unix listener needs an absolute path, as in unix:///run/egress-edge/admin.sock"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("`{s}` is not `ip:port` or `unix:///path`"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl From<ListenAddr> for String {
    fn from(l: ListenAddr) -> String {
        l.to_string()
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(de::Error::custom)
    }
}
