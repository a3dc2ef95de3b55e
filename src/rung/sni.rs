//! Reading the guest's TLS ClientHello without consuming it.
//!
//! Used on the pass-through rung to learn the SNI before the tunnel opens. The bytes are read
//! into a buffer that the caller forwards unchanged; parsing is rustls's `Acceptor`, not
//! hand-written slicing. Size and time are bounded so a guest cannot hold a slot by trickling.
//! [`check`] asks the policy whether the SNI falls under the rule that admitted the CONNECT
//! host; this module does not decide that by itself.

use std::io;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::net::host::Host;
use crate::policy::{Decision, OtherRule, Who};
use crate::state::Snapshot;

/// The SNI must be present and fall under the same rule that allowed the CONNECT host; the
/// `Err` is the cause shown in the log.
pub fn check(
    snap: &Snapshot,
    who: Option<Who<'_>>,
    sni: Option<&str>,
    port: u16,
    decision: &Decision,
) -> Result<Host, String> {
    let Some(sni) = sni else {
        return Err("the ClientHello carries no server name (SNI)".to_owned());
    };
    snap.config
        .policy
        .same_rule_for(who, sni, port, decision)
        .map_err(|e| match e {
            OtherRule::Invalid(e) => format!("invalid SNI: {e}"),
            OtherRule::Rule {
                host,
                rule,
                expected,
            } => format!(
                "SNI {host} falls under rule `{rule}`, not `{expected}` that allowed the CONNECT host"
            ),
        })
}

/// Upper bound on ClientHello bytes buffered (post-quantum key shares make hellos ~2 KiB; a
/// hello spread over many records is still far below this).
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("the guest sent no TLS ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the guest closed the connection before a complete ClientHello")]
    Eof,
    #[error("the ClientHello exceeds {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

impl HelloError {
    /// How a unit that failed here ended, and whether the guest should get a TLS alert (it
    /// sent something, just not a usable ClientHello).
    pub fn outcome(&self) -> (crate::observe::access_log::Outcome, bool) {
        use crate::observe::access_log::Outcome;
        match self {
            HelloError::Timeout(_) => (Outcome::HandshakeTimeout, false),
            HelloError::Eof | HelloError::Io(_) => (Outcome::GuestClosed, false),
            HelloError::TooLarge | HelloError::NotTls(_) => (Outcome::NotTls, true),
        }
    }
}

/// The raw bytes read and the server name they carry (if any), lowercase as sent.
#[derive(Debug)]
pub struct PeekedHello {
    pub bytes: Vec<u8>,
    pub server_name: Option<String>,
}

/// Reads until a whole ClientHello has been seen.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> Result<PeekedHello, HelloError> {
    match tokio::time::timeout(timeout, read_inner(io)).await {
        Ok(r) => r,
        Err(_) => Err(HelloError::Timeout(timeout)),
    }
}

async fn read_inner<R: AsyncRead + Unpin>(io: &mut R) -> Result<PeekedHello, HelloError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    // On the heap, not in the future: the future's size is what a tunnel task keeps for its
    // whole life, long after the hello was read.
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Eof);
        }
        if bytes.len() + n > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            // rustls buffers a bounded amount; refusing more is the size limit doing its job.
            if acceptor.read_tls(&mut fresh)? == 0 {
                return Err(HelloError::TooLarge);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(PeekedHello { bytes, server_name });
            }
            Err((e, _alert)) => return Err(HelloError::NotTls(e.to_string())),
        }
    }
}

/// A fatal TLS alert record (`access_denied`), so a refused guest's TLS stack reports a clear
/// error instead of a reset. TLS 1.2 record version is what stacks expect before negotiation.
pub const ALERT_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];
