//! Command-line definitions (clap). Dispatch lives in `main.rs`.

mod admin_client;
pub mod handle;
pub mod health;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "egress-edge",
    version,
    about = "The egress proxy for sandboxes: deny, passthrough or bump per destination"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (with no --config: the built-in solo default on 127.0.0.1:3128).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file; exit 0, or print a located error and exit 1.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Deployment CA commands.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Credential handle commands.
    #[command(subcommand)]
    Handle(HandleCommand),
    /// Probe a running proxy's admin `/healthz` (for container HEALTHCHECKs: no curl needed).
    Health {
        /// Admin address: host:port or unix:///path.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
    },
    /// Envoy SDS v3 server commands.
    #[command(subcommand)]
    Sds(SdsCommand),
    /// Run a command whose only way out is this proxy: a new network and mount namespace,
    /// TCP to the transparent listener, DNS to the guest resolver, other UDP rejected, the
    /// deployment CA in the trust store. Exits with the command's status. Needs root.
    Jail(JailArgs),
    /// Print the nftables ruleset that makes the proxy a sandbox's only way out (for
    /// namespaces, containers or pods set up by someone else): `... | nft -f -`.
    NftRules(NftRulesArgs),
    /// The jail's child side (internal).
    #[command(name = "__jail-exec", hide = true)]
    JailExec(JailExecArgs),
}

#[derive(Debug, Args)]
pub struct JailArgs {
    /// The proxy's config (with none: the built-in default).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Run the command as this user (name or uid). Default: the user sudo was run by
    /// (SUDO_UID), else root without capabilities.
    #[arg(long)]
    pub user: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct NftRulesArgs {
    /// The config whose proxy.transparent, dns.listen and proxy.listen ports the rules use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub mode: NftMode,
    /// The nftables table (family inet) the rules live in.
    #[arg(long, default_value = "egress_edge")]
    pub table: String,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NftMode {
    /// Gateway mode: the sandbox's traffic arrives on this interface (veth, bridge) of the
    /// proxy's namespace.
    #[arg(long)]
    pub interface: Option<String>,
    /// Sidecar mode: the proxy shares the sandbox's namespace and runs as this uid.
    #[arg(long)]
    pub sidecar_uid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct JailExecArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub proxy: String,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the deployment CA certificate (PEM), creating the CA if absent.
    Export(StateArgs),
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct StateArgs {
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum HandleCommand {
    /// Mint a handle and print it on stdout.
    Mint {
        #[arg(long = "credential", required = true)]
        credentials: Vec<String>,
        #[arg(long, default_value = "15m")]
        ttl: String,
        #[arg(long)]
        session: Option<String>,
        /// Bind the handle to this sandbox: redeemed only on its connections.
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long = "method")]
        methods: Vec<String>,
        #[arg(long = "path-prefix")]
        path_prefixes: Vec<String>,
        #[command(flatten)]
        target: MintTarget,
        /// With --issuer-key: the issuer id written into the handle (as edges list it under
        /// fleet.handle_issuers).
        #[arg(long, requires = "issuer_key")]
        issuer: Option<String>,
    },
    /// Create an Ed25519 key pair for an external handle issuer: FILE (private, 0600, never
    /// overwritten) and FILE.pub (the public key edges list under fleet.handle_issuers).
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Revoke handles by id, by session, or every handle bound to a sandbox.
    Revoke {
        #[arg(
            long,
            conflicts_with_all = ["session", "sandbox"],
            required_unless_present_any = ["session", "sandbox"]
        )]
        id: Option<String>,
        #[arg(long, conflicts_with = "sandbox")]
        session: Option<String>,
        #[arg(long)]
        sandbox: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Who signs a minted handle: a running proxy, a state dir's key, or an external issuer's key.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MintTarget {
    /// Admin API base URL (http://127.0.0.1:9901 or unix:///path/admin.sock).
    #[arg(long)]
    pub admin: Option<String>,
    /// Sign with the deployment key of a state directory (no running proxy needed).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Sign offline as an external issuer with this private key (see `handle keygen`);
    /// needs --issuer.
    #[arg(long, requires = "issuer", value_name = "FILE")]
    pub issuer_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct AdminTarget {
    /// Admin API base URL (http://127.0.0.1:9901 or unix:///path/admin.sock).
    #[arg(long)]
    pub admin: Option<String>,
    /// Operate directly on a state directory (no running proxy needed).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SdsCommand {
    /// Serve secrets from a watched file over Envoy SDS v3 (StreamSecrets, FetchSecrets), and
    /// the fleet state (revocations, profiles, sandboxes, kill switch) over ADS: the control
    /// plane of a small fleet.
    Serve {
        /// host:port or unix:///path
        #[arg(long)]
        listen: String,
        #[arg(long)]
        secrets: PathBuf,
        /// Profiles and sandboxes for every edge: the `profiles:` and `sandboxes:` sections of
        /// an edge config, watched.
        #[arg(long)]
        fleet: Option<PathBuf>,
        /// Admin API address (revoke, kill switch, sandboxes, handles), pushed to every edge.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token for the admin API (a file, mode 0600); required off loopback.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Where revocations, sandboxes, the kill switch and the issuer key are kept.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Time to live of grants (profiles, sandboxes) on an edge cut off from this server;
        /// 0 for none. Revocations and the kill switch never lapse.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        grant_ttl: std::time::Duration,
        /// The issuer id of handles minted here (edges list it in fleet.handle_issuers).
        #[arg(long, default_value = "control")]
        issuer: String,
        /// Longest lifetime of a handle minted here.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        handle_max_ttl: std::time::Duration,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
    },
}
