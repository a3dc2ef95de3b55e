//! The `egress-edge` binary: parse the command line, dispatch, map errors to exit codes
//! (0 ok, 1 usage or config error, 2 runtime failure).

use std::process::ExitCode;

use clap::Parser;
use egress_edge::app::{App, BuildOptions, Listeners};
use egress_edge::cli::{
    CaCommand, Cli, Command, HandleCommand, JailArgs, NftRulesArgs, SdsCommand, StateArgs,
};
use egress_edge::config::{self, Config};

/// jemalloc, with its background purge threads switched on in [`main`]: freed memory goes back
/// to the system within its decay time even when no more traffic comes (glibc's allocator
/// kept it; mimalloc purged only on later allocations; see bench/soak/idle-tunnels.sh).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Without background threads jemalloc purges only on later allocator calls, so an idle
    // proxy would keep the peak of its last burst resident.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("egress-edge: warning: allocator background purging unavailable: {e}");
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let command = match cli.command {
        // The jail's child changes namespaces, which applies to the calling thread only: it
        // runs before any runtime thread exists.
        Command::JailExec(args) => return ExitCode::from(egress_edge::jail::exec::run(&args)),
        Command::Jail(args) => return jail(args),
        other => other,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(2)
        })
}

/// `jail`: privileges are checked before anything else (the config included); the exit code
/// is the command's.
fn jail(args: JailArgs) -> ExitCode {
    let tools = match egress_edge::jail::preflight() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let config = match load(args.config.as_deref()) {
            Ok(c) => c,
            Err(Failure::Config(m)) => return Err((1, m)),
            Err(Failure::Runtime(e)) => return Err((2, format!("{e:#}"))),
        };
        let opts = egress_edge::jail::JailOptions {
            user: args.user,
            command: args.command,
        };
        egress_edge::jail::run(config, tools, opts)
            .await
            .map_err(|e| (if e.is_usage() { 1 } else { 2 }, e.to_string()))
    });
    // Whatever the proxy left running ends with the runtime, without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn nft_rules(args: NftRulesArgs) -> Result<(), Failure> {
    let config = load(args.config.as_deref())?;
    let req = egress_edge::jail::NftRulesRequest {
        interface: args.mode.interface,
        sidecar_uid: args.mode.sidecar_uid,
        table: args.table,
    };
    let text = egress_edge::jail::nft_rules(&config, &req).map_err(|e| {
        if e.is_usage() {
            Failure::Config(e.to_string())
        } else {
            Failure::Runtime(e.into())
        }
    })?;
    print!("{text}");
    Ok(())
}

enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Exit code by error class: configuration problems 1, failures of the environment 2.
impl From<egress_edge::app::AppError> for Failure {
    fn from(e: egress_edge::app::AppError) -> Self {
        if e.is_runtime() {
            Failure::Runtime(e.into())
        } else {
            Failure::Config(e.to_string())
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, Failure> {
    match path {
        Some(p) => config::load_file(p),
        None => Config::builtin(),
    }
    .map_err(|e| Failure::Config(e.to_string()))
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::NftRules(args) => nft_rules(args),
        Command::Jail(_) | Command::JailExec(_) => Err(Failure::Config(
            "jail runs outside the async dispatcher".into(),
        )),
        Command::Run { config: path } => {
            let config = load(path.as_deref())?;
            run(config, path).await
        }
        Command::CheckConfig { config } => {
            let c = load(Some(&config))?;
            // Referenced files are part of validity: a config whose CA or roots cannot load
            // would fail at `run`.
            egress_edge::app::check_files(&c)?;
            println!(
                "{}: ok ({} destinations, default rung {}; {} profiles, {} sandboxes)",
                config.display(),
                c.destinations.len(),
                c.default_rung,
                c.profiles.len(),
                c.sandboxes.len()
            );
            Ok(())
        }
        Command::Ca(CaCommand::Export(StateArgs { state_dir, config })) => {
            let mut c = load(config.as_deref())?;
            if let Some(dir) = state_dir {
                c.state_dir = dir;
            }
            let pem = egress_edge::app::export_ca(&c)
                .await
                .map_err(|e| Failure::Config(e.to_string()))?;
            print!("{pem}");
            Ok(())
        }
        Command::Handle(cmd) => handle(cmd).await,
        Command::Health { admin } => egress_edge::cli::health::health(&admin)
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!(e))),
        Command::Sds(SdsCommand::Serve {
            listen,
            secrets,
            tls_cert,
            tls_key,
            client_ca,
            fleet,
            admin,
            admin_token_file,
            state_dir,
            grant_ttl,
            issuer,
            handle_max_ttl,
        }) => {
            egress_edge::observe::logging::init(
                &Config::builtin()
                    .map_err(|e| Failure::Config(e.to_string()))?
                    .log,
            );
            let listen = egress_sds::server::Listen::parse(&listen)
                .map_err(|e| Failure::Config(e.to_string()))?;
            let tls = egress_sds::server::ServerTls::from_parts(tls_cert, tls_key, client_ca)
                .map_err(|e| Failure::Config(e.to_string()))?;
            // Anyone who can connect receives every secret: off loopback, require client auth.
            if let egress_sds::server::Listen::Tcp(addr) = &listen {
                let mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
                if !addr.ip().is_loopback() && !mtls {
                    return Err(Failure::Config(format!(
                        "--listen {addr} is not loopback: serving secrets there needs --tls-cert, --tls-key and --client-ca"
                    )));
                }
            }
            let opts = egress_edge::control::ControlOptions {
                serve: egress_sds::server::ServeOptions {
                    listen,
                    secrets_file: secrets,
                    tls,
                },
                fleet_file: fleet,
                admin,
                admin_token_file,
                state_dir,
                grant_ttl: Some(grant_ttl).filter(|t| !t.is_zero()),
                issuer,
                handle_max_ttl,
            };
            egress_edge::control::serve(opts, shutdown_signal())
                .await
                .map_err(|e| match e {
                    egress_edge::control::ControlError::Usage(m)
                    | egress_edge::control::ControlError::FleetFile(m) => Failure::Config(m),
                    e => Failure::Runtime(anyhow::Error::new(e).context("sds serve")),
                })
        }
    }
}

async fn handle(cmd: HandleCommand) -> Result<(), Failure> {
    egress_edge::cli::handle::run(cmd)
        .await
        .map_err(|e| match e {
            egress_edge::cli::handle::CliError::Usage(m) => Failure::Config(m),
            egress_edge::cli::handle::CliError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })
}

async fn run(config: Config, path: Option<std::path::PathBuf>) -> Result<(), Failure> {
    egress_edge::observe::logging::init(&config.log);
    let listeners = Listeners::bind(&config).await?;
    let app = App::build(config, listeners, BuildOptions::default()).await?;
    // SIGHUP and edits of the file reload the policy; the built-in default has no file.
    if let Some(p) = path {
        app.reloader().watch(p);
    }
    app.run(shutdown_signal()).await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
