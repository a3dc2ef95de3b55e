//! Command-line definitions (clap). Dispatch lives in `main.rs`.

mod admin_client;
pub mod handle;
pub mod health;

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
        #[arg(long)]
        host: Option<String>,
        #[arg(long = "method")]
        methods: Vec<String>,
        #[arg(long = "path-prefix")]
        path_prefixes: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Revoke handles by id or by session.
    Revoke {
        #[arg(long, conflicts_with = "session", required_unless_present = "session")]
        id: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
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
    /// Serve secrets from a watched file over Envoy SDS v3 (StreamSecrets, FetchSecrets).
    Serve {
        /// host:port or unix:///path
        #[arg(long)]
        listen: String,
        #[arg(long)]
        secrets: PathBuf,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
    },
}
