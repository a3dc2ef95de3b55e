//! The pass-through rung: after the CONNECT is answered, read the guest's ClientHello, check
//! its SNI falls under the rule that allowed the CONNECT host, then splice bytes unchanged.
//!
//! The upstream connection was opened (and its address vetted) before the 200, by the ladder.
//! This stage never terminates TLS and never looks at bytes after the ClientHello.

use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::context::ReqCtx;
use crate::observe::access_log::Outcome;
use crate::policy::Decision;
use crate::refusal::Kind;
use crate::rung::sni::{self, HelloError};
use crate::upstream::tunnel::{self, Stops};

/// Runs one pass-through tunnel to completion and logs it.
pub async fn run(
    ctx: ReqCtx,
    decision: Decision,
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut upstream: TcpStream,
) {
    let ReqCtx {
        conn,
        snap,
        port,
        mut access,
        kill,
        ..
    } = ctx;
    let shared = &conn.shared;
    let mut guest = match on_upgrade.await {
        Ok(u) => TokioIo::new(u),
        Err(e) => {
            access.ev.error = Some(e.to_string());
            return access.finish(Outcome::UpgradeFailed);
        }
    };
    let hello = match sni::read_client_hello(&mut guest, snap.config.proxy.handshake_timeout).await
    {
        Ok(h) => h,
        Err(e) => {
            let outcome = match e {
                HelloError::Timeout(_) => Outcome::HandshakeTimeout,
                HelloError::Eof | HelloError::Io(_) => Outcome::GuestClosed,
                HelloError::TooLarge | HelloError::NotTls(_) => {
                    let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
                    Outcome::NotTls
                }
            };
            access.ev.error = Some(e.to_string());
            return access.finish(outcome);
        }
    };
    access.ev.sni = hello.server_name.clone();
    if let Err(cause) = sni::check(&snap, hello.server_name.as_deref(), port, &decision) {
        let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
        let _ = guest.shutdown().await;
        shared.metrics.refusal(Kind::SniMismatch);
        access.ev.error = Some(cause);
        return access.finish(Outcome::SniMismatch);
    }
    if let Err(e) = upstream.write_all(&hello.bytes).await {
        access.ev.error = Some(e.to_string());
        return access.finish(Outcome::UpstreamConnect);
    }
    access.ev.bytes_up = hello.bytes.len() as u64;
    let stops = Stops {
        idle: snap.config.proxy.idle_timeout,
        shutdown: shared.hard_stop.clone(),
        kill,
    };
    shared.metrics.active_tunnels.inc();
    let spliced = tunnel::splice(guest, upstream, &stops).await;
    shared.metrics.active_tunnels.dec();
    access.ev.bytes_up += spliced.up;
    access.ev.bytes_down = spliced.down;
    access.finish(spliced.end.into());
}
