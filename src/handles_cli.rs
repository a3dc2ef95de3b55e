//! `egress-edge handle mint|revoke`, through the admin API or directly on a state dir.

use crate::cli::HandleCommand;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

pub async fn run(_cmd: HandleCommand) -> Result<(), CliError> {
    Err(CliError::Runtime(
        "handles are not available in this build".into(),
    ))
}
