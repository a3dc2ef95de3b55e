//! The pass-through rung: after the CONNECT is answered, read the guest's ClientHello, check
//! its SNI falls under the rule that allowed the CONNECT host, then splice bytes unchanged.
//! On the transparent listener the frontend has already read the hello (the SNI named the
//! host), so this stage forwards those bytes first and splices the rest.
//!
//! The upstream connection was opened (and its address vetted) before the 200, by the ladder.
//! This stage never terminates TLS and never looks at bytes after the ClientHello.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::context::ReqCtx;
use crate::observe::access_log::Outcome;
use crate::policy::Decision;
use crate::refusal::Kind;
use crate::rung::prefixed::Prefixed;
use crate::rung::sni::{self, PeekedHello};
use crate::upstream::tunnel::{self, Stops};

/// What the guest's first bytes are, as far as the frontend read them.
#[derive(Debug)]
pub enum Opening {
    /// Nothing read yet: read the ClientHello and check its SNI (CONNECT).
    ReadHello,
    /// The ClientHello, already read and its SNI admitted by the frontend.
    Hello(PeekedHello),
    /// Not TLS: splice whatever comes, unread (an allowed raw TCP destination).
    Opaque,
}

/// Runs one pass-through tunnel to completion and logs it. `buffered` is what the guest
/// sent that was read off `guest` already (bytes hyper buffered after the CONNECT head).
pub async fn run(
    ctx: ReqCtx,
    decision: Decision,
    mut guest: TcpStream,
    buffered: Vec<u8>,
    mut upstream: TcpStream,
    opening: Opening,
) {
    let ReqCtx {
        conn,
        snap,
        port,
        mut access,
        kill,
        sandbox,
        ..
    } = ctx;
    let who = sandbox
        .as_deref()
        .map(crate::state::sandboxes::Sandbox::who);
    let shared = &conn.shared;
    let first = match opening {
        Opening::Opaque => buffered,
        Opening::Hello(mut hello) => {
            hello.bytes.extend_from_slice(&buffered);
            hello.bytes
        }
        Opening::ReadHello => {
            let mut reader = Prefixed::new(buffered, &mut guest);
            let read = tokio::select! {
                r = sni::read_client_hello(&mut reader, snap.config.proxy.handshake_timeout) => r,
                end = kill.fired() => return access.finish(end.into()),
            };
            let unread = reader.into_unread();
            let hello = match read {
                Ok(h) => h,
                Err(e) => {
                    let (outcome, alert) = e.outcome();
                    if alert {
                        let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
                    }
                    access.ev.error = Some(e.to_string());
                    return access.finish(outcome);
                }
            };
            access.ev.sni = hello.server_name.clone();
            if let Err(cause) =
                sni::check(&snap, who, hello.server_name.as_deref(), port, &decision)
            {
                let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
                let _ = guest.shutdown().await;
                shared.metrics.refusal(Kind::SniMismatch);
                access.ev.error = Some(cause);
                return access.finish(Outcome::SniMismatch);
            }
            let mut bytes = hello.bytes;
            bytes.extend_from_slice(&unread);
            bytes
        }
    };
    if !first.is_empty()
        && let Err(e) = upstream.write_all(&first).await
    {
        access.ev.error = Some(e.to_string());
        return access.finish(Outcome::UpstreamConnect);
    }
    access.ev.bytes_up = first.len() as u64;
    // The tunnel may stay open for hours: keep nothing it no longer needs.
    drop(first);
    let stops = Stops {
        idle: snap.config.proxy.idle_timeout,
        shutdown: shared.hard_stop.clone(),
        kill,
    };
    shared.metrics.active_tunnels.inc();
    let spliced = tunnel::splice_tcp(guest, upstream, &stops).await;
    shared.metrics.active_tunnels.dec();
    access.ev.bytes_up += spliced.up;
    access.ev.bytes_down = spliced.down;
    access.finish(spliced.end.into());
}
