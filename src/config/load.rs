//! Reading a config file into [`Config`], with errors located by key path and line.
//!
//! Parse errors come from the YAML parser (which knows the line) wrapped with
//! `serde_path_to_error` (which knows the key path). Errors found after parsing (cross-field
//! rules) carry the key path; the line is found by walking the YAML text for that path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::defaults;
use super::raw::{self, DenyEntry, RawConfig};
use super::{
    AdminConfig, CaConfig, CaSource, Config, DnsConfig, LogConfig, NetworkConfig, ProxyConfig,
    SdsConfig, SdsTlsFiles, SecretsConfig, TlsServerFiles, UpstreamConfig, rules_from,
};
use crate::config::sandbox::{id_problem, source_conflict};
use crate::config::{ProfileView, SandboxConfig};
use crate::net::host::Host;
use crate::net::netguard::AddressPolicy;
use crate::policy::{Mode, Policy, RuleSet, Rung};

/// A config error, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<built-in default>`).
    pub origin: String,
    /// Dotted key path, e.g. `destinations[2].credential.format`; empty for the document.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        key: String::new(),
        line: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse_str(&text, &origin)
}

/// Parses config text; `origin` names it in errors.
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_with(text, origin, true)
}

/// Parses a control plane's fleet file (the `profiles` and `sandboxes` of an edge config):
/// as [`parse_str`], except that credentials need no `secrets` source here, since the edges
/// that apply the profiles have theirs.
pub fn parse_fleet_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_with(text, origin, false)
}

fn parse_with(text: &str, origin: &str, own_secrets: bool) -> Result<Config, ConfigError> {
    // An empty document means "all defaults", which serde_yaml reports as an error otherwise.
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            ConfigError {
                origin: origin.to_owned(),
                key: if key == "." { String::new() } else { key },
                line,
                message: strip_location(&inner.to_string()),
            }
        })?
    };
    from_raw(raw, own_secrets).map_err(|(key, message)| ConfigError {
        origin: origin.to_owned(),
        line: locate(text, &key),
        key,
        message,
    })
}

/// serde_yaml appends " at line N column M"; we print the line ourselves.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Best-effort line of a dotted key path (`a.b[2].c`) in block or flow YAML.
fn locate(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0usize;
    let mut found = None;
    for seg in key.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let needle = format!("{name}:");
        // A key that is absent (the error is that it is missing) is reported at its parent.
        let Some(pos) = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle)
                || l.contains(&format!("{{ {needle}"))
                || l.contains(&format!(", {needle}"))
        }) else {
            return found;
        };
        from = pos.0;
        found = Some(pos.0 + 1);
        if let Some(idx) = index {
            let item = lines
                .iter()
                .enumerate()
                .skip(from + 1)
                .filter(|(_, l)| l.trim_start().starts_with("- "))
                .nth(idx)?;
            from = item.0;
            found = Some(item.0 + 1);
        }
    }
    found
}

type Located<T> = Result<T, (String, String)>;

fn err<T>(key: &str, msg: impl Into<String>) -> Located<T> {
    Err((key.to_owned(), msg.into()))
}

/// `Ok(Some)` when both are set, `Ok(None)` when neither is; else the error names the one
/// that is missing (`key_a` / `key_b` are the keys to report).
fn both_or_neither<A, B>(
    a: Option<A>,
    b: Option<B>,
    key_a: &str,
    key_b: &str,
    what: &str,
) -> Located<Option<(A, B)>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        (Some(_), None) => err(
            key_b,
            format!("{what}: `{key_a}` is set without `{key_b}`; set both or neither"),
        ),
        (None, Some(_)) => err(
            key_a,
            format!("{what}: `{key_b}` is set without `{key_a}`; set both or neither"),
        ),
    }
}

fn from_raw(raw: RawConfig, own_secrets: bool) -> Located<Config> {
    let proxy = proxy_from(raw.proxy)?;
    let admin = admin_from(raw.admin)?;
    let log = log_from(raw.log)?;
    let ca = ca_from(raw.ca)?;
    let upstream = UpstreamConfig {
        extra_roots: raw.upstream.extra_roots,
        extra_roots_sds: raw.upstream.extra_roots_sds,
        response_header_timeout: dur(
            raw.upstream.response_header_timeout,
            defaults::RESPONSE_HEADER_TIMEOUT,
        ),
        pool_idle_timeout: dur(raw.upstream.pool_idle_timeout, defaults::POOL_IDLE_TIMEOUT),
        max_connections_per_host: raw
            .upstream
            .max_connections_per_host
            .unwrap_or(defaults::MAX_CONNECTIONS_PER_HOST),
        max_idle_per_host: raw
            .upstream
            .max_idle_per_host
            .unwrap_or(defaults::MAX_IDLE_PER_HOST),
        max_pooled_total: raw
            .upstream
            .max_pooled_total
            .unwrap_or(defaults::MAX_POOLED_TOTAL),
    };
    if upstream.max_connections_per_host == 0 {
        return err("upstream.max_connections_per_host", "must be at least 1");
    }
    let network = network_from(raw.network)?;
    let secrets = match raw.secrets {
        None => None,
        Some(s) => Some(secrets_from(s)?),
    };
    let (rules, destinations) = rules_from("destinations", raw.destinations)?;
    let default_rung = raw.default_rung.unwrap_or(Rung::Deny);
    let (profile_sets, profiles) = profiles_from(raw.profiles)?;
    let policy = Policy::new(
        RuleSet::new(rules, default_rung, Mode::Enforce),
        profile_sets,
    );
    let sandboxes = sandboxes_from(raw.sandboxes, &policy)?;
    let sandbox_metric_labels = raw
        .metrics
        .sandbox_labels
        .unwrap_or(defaults::SANDBOX_METRIC_LABELS);
    if sandbox_metric_labels > defaults::SANDBOX_METRIC_LABELS_MAX {
        return err(
            "metrics.sandbox_labels",
            format!(
                "at most {} (each label value is a time series per metric)",
                defaults::SANDBOX_METRIC_LABELS_MAX
            ),
        );
    }
    let dns = match raw.dns {
        None => None,
        Some(d) => Some(dns_from(d)?),
    };
    let handle_max_ttl = dur(raw.handles.max_ttl, defaults::HANDLE_MAX_TTL);
    if !(defaults::HANDLE_MAX_TTL_MIN..=defaults::HANDLE_MAX_TTL_MAX).contains(&handle_max_ttl) {
        return err("handles.max_ttl", "must be between 1s and 7d");
    }
    let fleet = super::fleet::fleet_from(
        raw.fleet,
        secrets.as_ref(),
        raw.handles.issuer,
        handle_max_ttl,
    )?;
    let config = Config {
        fleet,
        handle_max_ttl,
        dns,
        proxy,
        admin,
        log,
        state_dir: raw.state_dir.unwrap_or_else(|| defaults::STATE_DIR.into()),
        ca,
        upstream,
        network,
        secrets,
        policy,
        destinations,
        default_rung,
        profiles,
        sandboxes,
        sandbox_metric_labels,
    };
    if own_secrets {
        check_secrets_source(&config)?;
    }
    Ok(config)
}

/// A profile delivered by a control plane: `spec` is the body of `profiles.NAME` as in the
/// config (YAML or JSON), checked exactly as the config's. Errors are located under
/// `profiles.NAME`.
pub fn fleet_profile(name: &str, spec: &str) -> Result<(RuleSet, ProfileView), String> {
    let raw: raw::RawProfile = serde_yaml_ng::from_str(spec)
        .map_err(|e| format!("profiles.{name}: {}", strip_location(&e.to_string())))?;
    let (mut sets, mut views) = profiles_from(BTreeMap::from([(name.to_owned(), raw)]))
        .map_err(|(key, msg)| format!("{key}: {msg}"))?;
    match (sets.pop_first(), views.pop_first()) {
        (Some((_, set)), Some((_, view))) => Ok((set, view)),
        _ => Err(format!("profiles.{name}: not built")),
    }
}

/// `base` with `fleet` profiles added beside its own (a name in both is refused: the config's
/// profile would silently change meaning).
pub fn with_fleet_profiles(
    base: &Config,
    fleet: &BTreeMap<String, (RuleSet, ProfileView)>,
) -> Result<Config, String> {
    let mut config = base.clone();
    if fleet.is_empty() {
        return Ok(config);
    }
    let mut sets = base.policy.profiles().clone();
    for (name, (set, view)) in fleet {
        if base.profiles.contains_key(name) {
            return Err(format!(
                "profile `{name}` is also defined in this edge's config file"
            ));
        }
        sets.insert(Arc::from(name.as_str()), set.clone());
        config.profiles.insert(name.clone(), view.clone());
    }
    config.policy = Policy::new(base.policy.top().clone(), sets);
    Ok(config)
}

type Profiles = (BTreeMap<Arc<str>, RuleSet>, BTreeMap<String, ProfileView>);

fn profiles_from(raw: BTreeMap<String, raw::RawProfile>) -> Located<Profiles> {
    let mut sets = BTreeMap::new();
    let mut views = BTreeMap::new();
    for (name, p) in raw {
        let key = format!("profiles.{name}");
        if let Some(problem) = id_problem(&name) {
            return err(&key, problem.replace("sandbox id", "profile name"));
        }
        let (rules, destinations) = rules_from(&format!("{key}.destinations"), p.destinations)?;
        let mode = p.mode.unwrap_or_default();
        let default_rung = p.default_rung.unwrap_or(Rung::Deny);
        sets.insert(
            Arc::from(name.as_str()),
            RuleSet::new(rules, default_rung, mode),
        );
        views.insert(
            name,
            ProfileView {
                mode,
                default_rung,
                destinations,
            },
        );
    }
    Ok((sets, views))
}

fn sandboxes_from(raw: Vec<raw::RawSandbox>, policy: &Policy) -> Located<Vec<SandboxConfig>> {
    let mut out: Vec<SandboxConfig> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("sandboxes[{i}]");
        if let Some(problem) = id_problem(&s.id) {
            return err(&format!("{key}.id"), problem);
        }
        if let Some(j) = out.iter().position(|o| o.id == s.id) {
            return err(
                &format!("{key}.id"),
                format!("`{}` is already the id of sandboxes[{j}]", s.id),
            );
        }
        if !policy.has_profile(&s.profile) {
            return err(
                &format!("{key}.profile"),
                format!("no profile `{}` under `profiles`", s.profile),
            );
        }
        let sources: Vec<IpNet> = s.sources.iter().map(|n| n.0).collect();
        match (sources.is_empty(), &s.token_file) {
            (true, None) => {
                return err(
                    &key,
                    "set `sources` (the sandbox's addresses) or `token_file` (its proxy token)",
                );
            }
            (false, Some(_)) => {
                return err(
                    &format!("{key}.token_file"),
                    "set `sources` or `token_file`, not both: a sandbox is identified one way",
                );
            }
            _ => {}
        }
        let taken = out
            .iter()
            .flat_map(|o| o.sources.iter().map(move |n| (o.id.as_str(), n)));
        if let Some(conflict) = source_conflict(&sources, taken) {
            return err(&format!("{key}.sources"), conflict);
        }
        out.push(SandboxConfig {
            id: s.id,
            profile: s.profile,
            sources,
            token_file: s.token_file,
        });
    }
    Ok(out)
}

fn proxy_from(raw: raw::RawProxy) -> Located<ProxyConfig> {
    let proxy = ProxyConfig {
        listen: raw.listen.unwrap_or(defaults::PROXY_LISTEN),
        transparent: raw.transparent,
        max_connections: raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
        max_header_bytes: raw.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES),
        header_read_timeout: dur(raw.header_read_timeout, defaults::HEADER_READ_TIMEOUT),
        connect_timeout: dur(raw.connect_timeout, defaults::CONNECT_TIMEOUT),
        handshake_timeout: dur(raw.handshake_timeout, defaults::HANDSHAKE_TIMEOUT),
        idle_timeout: dur(raw.idle_timeout, defaults::IDLE_TIMEOUT),
        shutdown_grace: dur(raw.shutdown_grace, defaults::SHUTDOWN_GRACE),
        require_sandbox: raw.require_sandbox,
    };
    if proxy.max_connections == 0 {
        return err("proxy.max_connections", "must be at least 1");
    }
    if proxy.max_header_bytes < defaults::MIN_HEADER_BYTES {
        return err("proxy.max_header_bytes", "must be at least 8192 bytes");
    }
    for (key, d) in [
        ("proxy.header_read_timeout", proxy.header_read_timeout),
        ("proxy.connect_timeout", proxy.connect_timeout),
        ("proxy.handshake_timeout", proxy.handshake_timeout),
        ("proxy.idle_timeout", proxy.idle_timeout),
    ] {
        if d.is_zero() {
            return err(key, "must be greater than zero");
        }
    }
    Ok(proxy)
}

fn dns_from(raw: raw::RawDns) -> Located<DnsConfig> {
    let dns = DnsConfig {
        listen: raw.listen,
        ttl: dur(raw.ttl, defaults::DNS_TTL),
        max_label_len: raw.max_label_len.unwrap_or(defaults::DNS_MAX_LABEL_LEN),
    };
    if dns.ttl.is_zero() || dns.ttl > defaults::DNS_TTL_MAX {
        return err("dns.ttl", "must be between 1s and 5m");
    }
    if !(1..=63).contains(&dns.max_label_len) {
        return err("dns.max_label_len", "must be between 1 and 63");
    }
    Ok(dns)
}

fn admin_from(raw: raw::RawAdmin) -> Located<AdminConfig> {
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            if t.ca.is_some() {
                return err(
                    "admin.tls.ca",
                    "unknown key for a server; did you mean `client_ca`?",
                );
            }
            let pair = both_or_neither(
                t.cert,
                t.key,
                "admin.tls.cert",
                "admin.tls.key",
                "`cert` and `key`",
            )?;
            match pair {
                Some((cert, key)) => Some(TlsServerFiles {
                    cert,
                    key,
                    client_ca: t.client_ca,
                }),
                None if t.client_ca.is_some() => {
                    return err(
                        "admin.tls.client_ca",
                        "client_ca needs the server's own `cert` and `key`",
                    );
                }
                None => return err("admin.tls", "set `cert` and `key` (or remove `tls`)"),
            }
        }
    };
    Ok(AdminConfig {
        listen: raw
            .listen
            .unwrap_or(raw::ListenAddr::Tcp(defaults::ADMIN_LISTEN)),
        token_file: raw.token_file,
        tls,
    })
}

fn log_from(raw: raw::RawLog) -> Located<LogConfig> {
    let log = LogConfig {
        format: raw.format.unwrap_or_default(),
        level: raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned()),
    };
    if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
        return err(
            "log.level",
            format!(
                "`{}` is not a level or filter (e.g. info, debug, egress_edge=debug)",
                log.level
            ),
        );
    }
    Ok(log)
}

fn ca_from(raw: raw::RawCa) -> Located<CaConfig> {
    let files = both_or_neither(
        raw.cert,
        raw.key,
        "ca.cert",
        "ca.key",
        "`ca.cert` and `ca.key` come together (bring your own CA)",
    )?;
    let source = match (files, raw.sds) {
        (None, None) => CaSource::Generated,
        (Some((cert, key)), None) => CaSource::Files { cert, key },
        (None, Some(secret)) => CaSource::Sds { secret },
        (Some(_), Some(_)) => {
            return err(
                "ca.sds",
                "`ca.sds` cannot be combined with `ca.cert`/`ca.key`",
            );
        }
    };
    let leaf_ttl = dur(raw.leaf_ttl, defaults::LEAF_TTL);
    if !(defaults::LEAF_TTL_MIN..=defaults::LEAF_TTL_MAX).contains(&leaf_ttl) {
        return err("ca.leaf_ttl", "must be between 1h and 90d");
    }
    Ok(CaConfig { source, leaf_ttl })
}

fn network_from(raw: raw::RawNetwork) -> Located<NetworkConfig> {
    let deny_entries = raw.deny.unwrap_or_else(|| vec![DenyEntry::Default]);
    let mut deny = Vec::new();
    let mut deny_view = Vec::new();
    for e in deny_entries {
        match e {
            DenyEntry::Default => {
                deny.extend(AddressPolicy::default_deny_nets());
                deny_view.push("default".to_owned());
            }
            DenyEntry::Net(n) => {
                deny.push(n);
                deny_view.push(n.to_string());
            }
        }
    }
    let allow: Vec<_> = raw.allow.iter().map(|n| n.0).collect();
    let mut hosts = HashMap::new();
    for (name, addrs) in raw.hosts {
        let key = format!("network.hosts.{name}");
        let normalized = match Host::parse(&name) {
            Ok(Host::Name(n)) => n,
            Ok(Host::Ip(_)) => return err(&key, "an address cannot be overridden; only names"),
            Err(e) => return err(&key, e.to_string()),
        };
        let addrs = addrs.into_vec();
        if addrs.is_empty() {
            return err(&key, "list at least one address");
        }
        hosts.insert(normalized, addrs);
    }
    Ok(NetworkConfig {
        addresses: AddressPolicy::new(deny, allow.clone()),
        deny: deny_view,
        allow: allow.iter().map(ToString::to_string).collect(),
        hosts,
    })
}

fn secrets_from(s: raw::RawSecrets) -> Located<SecretsConfig> {
    match (s.file, s.sds) {
        (Some(path), None) => Ok(SecretsConfig::File {
            path,
            initial_fetch_timeout: dur(
                s.initial_fetch_timeout,
                defaults::FILE_INITIAL_FETCH_TIMEOUT,
            ),
        }),
        (None, Some(_)) if s.initial_fetch_timeout.is_some() => err(
            "secrets.initial_fetch_timeout",
            "for sds, set secrets.sds.initial_fetch_timeout",
        ),
        (None, Some(sds)) => Ok(SecretsConfig::Sds(sds_from(sds)?)),
        (Some(_), Some(_)) => err("secrets", "set either `file` or `sds`, not both"),
        (None, None) => err("secrets", "set `file` or `sds`"),
    }
}

/// A credential needs a secret source.
fn check_secrets_source(config: &Config) -> Located<()> {
    if config.secrets.is_some() {
        return Ok(());
    }
    let Some(name) = config.referenced_secrets().into_iter().next() else {
        return Ok(());
    };
    let key = config
        .destinations
        .iter()
        .position(|d| {
            d.credential
                .as_ref()
                .is_some_and(|c| c.secret_name() == name)
        })
        .map(|i| format!("destinations[{i}].credential"))
        .unwrap_or_else(|| "secrets".to_owned());
    err(
        &key,
        format!(
            "secret `{name}` is referenced but no `secrets` source (file or sds) is configured"
        ),
    )
}

fn sds_from(s: raw::RawSds) -> Located<SdsConfig> {
    let tls = match s.tls {
        None => None,
        Some(t) => {
            if t.client_ca.is_some() {
                return err(
                    "secrets.sds.tls.client_ca",
                    "unknown key for a client; did you mean `ca`?",
                );
            }
            let pair = both_or_neither(
                t.cert,
                t.key,
                "secrets.sds.tls.cert",
                "secrets.sds.tls.key",
                "`cert` and `key`",
            )?;
            let (cert, key) = pair.map_or((None, None), |(c, k)| (Some(c), Some(k)));
            Some(SdsTlsFiles {
                ca: t.ca,
                cert,
                key,
            })
        }
    };
    let target = s.target;
    let is_unix = target.starts_with("unix://");
    let is_https = target.starts_with("https://");
    let is_http = target.starts_with("http://");
    if !(is_unix || is_https || is_http) {
        return err(
            "secrets.sds.target",
            format!("`{target}`: use unix:///path, https://host:port or http://127.0.0.1:port"),
        );
    }
    if is_http {
        if tls.is_some() {
            return err("secrets.sds.tls", "TLS settings need an https:// target");
        }
        let authority = target.trim_start_matches("http://").trim_end_matches('/');
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let loopback = match Host::parse(host) {
            Ok(Host::Ip(ip)) => ip.is_loopback(),
            Ok(Host::Name(n)) => n == "localhost",
            Err(_) => false,
        };
        if !loopback {
            return err(
                "secrets.sds.target",
                format!(
                    "`{target}`: plaintext SDS is allowed only to a loopback address; use https:// with `tls`"
                ),
            );
        }
    }
    if is_unix && tls.is_some() {
        return err(
            "secrets.sds.tls",
            "TLS settings do not apply to a unix socket target",
        );
    }
    let node_id = s.node_id.unwrap_or_else(default_node_id);
    if node_id.is_empty() {
        return err(
            "secrets.sds.node_id",
            "must not be empty (SDS servers reject an empty node id)",
        );
    }
    let cluster = s
        .cluster
        .unwrap_or_else(|| defaults::SDS_CLUSTER.to_owned());
    if cluster.is_empty() {
        return err("secrets.sds.cluster", "must not be empty");
    }
    Ok(SdsConfig {
        target,
        tls,
        node_id,
        cluster,
        initial_fetch_timeout: dur(s.initial_fetch_timeout, defaults::SDS_INITIAL_FETCH_TIMEOUT),
    })
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "egress-edge".to_owned())
}

fn dur(v: Option<raw::Dur>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, "test.yaml")
    }

    #[test]
    fn builtin_default_is_valid_and_open_to_public_only() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:3128");
        assert_eq!(c.default_rung, Rung::Passthrough);
        assert!(
            c.network
                .addresses
                .check("10.0.0.1".parse().unwrap())
                .is_err()
        );
        assert!(
            c.network
                .addresses
                .check("93.184.216.34".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn empty_file_is_all_defaults_and_denies() {
        let c = parse("").unwrap();
        assert_eq!(c.default_rung, Rung::Deny);
        assert_eq!(
            c.upstream.max_connections_per_host,
            defaults::MAX_CONNECTIONS_PER_HOST
        );
        assert_eq!(c.upstream.max_idle_per_host, defaults::MAX_IDLE_PER_HOST);
        assert_eq!(c.upstream.max_pooled_total, defaults::MAX_POOLED_TOTAL);
    }

    #[test]
    fn upstream_pool_limits_are_read() {
        let c = parse(
            "upstream: { max_connections_per_host: 4, max_idle_per_host: 0, max_pooled_total: 7 }\n",
        )
        .unwrap();
        assert_eq!(c.upstream.max_connections_per_host, 4);
        assert_eq!(c.upstream.max_idle_per_host, 0);
        assert_eq!(c.upstream.max_pooled_total, 7);
    }

    #[test]
    fn error_table() {
        let cases: &[(&str, &str, &str, Option<usize>, &str)] = &[
            (
                "fleet source without sds",
                "fleet:\n  source: sds\n",
                "fleet.source",
                Some(2),
                "needs `secrets.sds`",
            ),
            (
                "unknown fleet source",
                "fleet:\n  source: etcd\n",
                "fleet.source",
                Some(2),
                "unknown variant",
            ),
            (
                "control plane admin without a fleet source",
                "fleet:\n  control_plane_admin: http://127.0.0.1:1\n",
                "fleet.control_plane_admin",
                Some(2),
                "only means something",
            ),
            (
                "control plane admin not a URL",
                "secrets:\n  sds: { target: http://127.0.0.1:1 }\nfleet:\n  source: sds\n  control_plane_admin: ftp://x\n",
                "fleet.control_plane_admin",
                Some(5),
                "http:// or https://",
            ),
            (
                "bad own issuer",
                "handles:\n  issuer: two words\n",
                "handles.issuer",
                Some(2),
                "issuer id",
            ),
            (
                "unknown top key",
                "proxy:\n  listen: 127.0.0.1:1\nbogus: 1\n",
                "bogus",
                Some(3),
                "unknown field `bogus`",
            ),
            (
                "unknown nested key",
                "proxy:\n  lisen: 127.0.0.1:1\n",
                "proxy.lisen",
                Some(2),
                "unknown field `lisen`",
            ),
            (
                "bad listen",
                "proxy:\n  listen: nope\n",
                "proxy.listen",
                Some(2),
                "invalid socket address",
            ),
            (
                "bad duration",
                "proxy:\n  idle_timeout: soon\n",
                "proxy.idle_timeout",
                Some(2),
                "not a duration",
            ),
            (
                "no upstream connections",
                "upstream:\n  max_connections_per_host: 0\n",
                "upstream.max_connections_per_host",
                Some(2),
                "at least 1",
            ),
            (
                "bad cidr",
                "network:\n  allow: [10.0.0.0/99]\n",
                "network.allow[0]",
                Some(2),
                "not a CIDR",
            ),
            (
                "bad host",
                "destinations:\n  - host: 'a b'\n",
                "destinations[0].host",
                Some(2),
                "invalid host pattern",
            ),
            (
                "mid wildcard",
                "destinations:\n  - host: a.*.com\n",
                "destinations[0].host",
                Some(2),
                "only a leading",
            ),
            (
                "bad rung",
                "default_rung: maybe\n",
                "default_rung",
                Some(1),
                "unknown variant",
            ),
            (
                "ca half",
                "ca:\n  cert: a.pem\n",
                "ca.key",
                Some(1),
                "both or neither",
            ),
            (
                "admin tls half",
                "admin:\n  tls: { cert: a.pem }\n",
                "admin.tls.key",
                Some(2),
                "set both or neither",
            ),
            (
                "client_ca without cert",
                "admin:\n  tls: { client_ca: a.pem }\n",
                "admin.tls.client_ca",
                Some(2),
                "needs the server",
            ),
            (
                "secret without source",
                "destinations:\n  - host: a.com\n    credential: { secret: k }\n",
                "destinations[0].credential",
                Some(3),
                "no `secrets` source",
            ),
            (
                "credential on passthrough",
                "secrets: { file: s.yaml }\ndestinations:\n  - host: a.com\n    rung: passthrough\n    credential: { secret: k }\n",
                "destinations[0].rung",
                Some(4),
                "must be bumped",
            ),
            (
                "format without placeholder",
                "secrets: { file: s.yaml }\ndestinations:\n  - host: a.com\n    credential: { secret: k, format: Bearer }\n",
                "destinations[0].credential.format",
                Some(4),
                "exactly once",
            ),
            (
                "plaintext sds off loopback",
                "secrets:\n  sds: { target: 'http://10.0.0.1:1' }\n",
                "secrets.sds.target",
                Some(2),
                "loopback",
            ),
            (
                "sds mtls half",
                "secrets:\n  sds: { target: 'https://s:1', tls: { cert: c.pem } }\n",
                "secrets.sds.tls.key",
                Some(2),
                "both or neither",
            ),
            (
                "duplicate id",
                "destinations:\n  - { id: x, host: a.com }\n  - { id: x, host: b.com }\n",
                "destinations[1].id",
                Some(3),
                "already the id",
            ),
            (
                "require_handle without credential",
                "destinations:\n  - host: a.com\n    require_handle: true\n",
                "destinations[0].require_handle",
                Some(3),
                "needs a credential",
            ),
            (
                "zero port",
                "destinations:\n  - { host: a.com, ports: [0] }\n",
                "destinations[0].ports",
                Some(2),
                "at least one port",
            ),
        ];
        for (case, text, key, line, msg) in cases {
            let e = parse(text).expect_err(case);
            assert_eq!(&e.key, key, "case `{case}`: {e}");
            assert_eq!(&e.line, line, "case `{case}`: {e}");
            assert!(
                e.message.contains(msg),
                "case `{case}`: `{}` lacks `{msg}`",
                e.message
            );
        }
    }

    #[test]
    fn contract_example_parses() {
        let text = "
proxy:
  listen: 127.0.0.1:3128
admin:
  listen: 127.0.0.1:9901
state_dir: ./.egress-edge
ca:
  leaf_ttl: 24h
upstream:
  extra_roots: [./upstream-ca.pem]
network:
  deny: [default]
  allow: [127.0.0.1/32]
  hosts: { upstream.test: 127.0.0.1 }
secrets:
  file: ./config/secrets.yaml
destinations:
  - host: api.openai.com
    ports: [443]
    credential:
      secret: openai-key
      header: Authorization
      format: \"Bearer {secret}\"
  - host: api.example.com
    credential:
      oauth2:
        token_url: https://auth.example.com/oauth/token
        client: example-client
        scopes: [read]
  - host: internal.corp.example
    credential:
      client_cert: spiffe-svid
    require_handle: true
  - host: \"*.pypi.org\"
  - host: internal.example.com
    rung: deny
default_rung: deny
";
        let c = parse(text).unwrap();
        let rungs: Vec<Rung> = c.policy.top().rules().iter().map(|r| r.rung).collect();
        assert_eq!(
            rungs,
            vec![
                Rung::Bump,
                Rung::Bump,
                Rung::Bump,
                Rung::Passthrough,
                Rung::Deny
            ]
        );
        let names: Vec<String> = c.referenced_secrets().into_iter().collect();
        assert_eq!(names, vec!["example-client", "openai-key", "spiffe-svid"]);
        assert_eq!(
            c.network.hosts["upstream.test"],
            vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
