//! The measured phases. Each runs its workers for a warm-up plus a fixed window and returns
//! merged samples; nothing here judges the numbers.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::future::join_all;

use crate::client::{NamesUsedUp, Proto, Target};
use crate::stats::{PhaseResult, Rec, Window, micros};
use crate::upstream::{LARGE_LEN, SMALL_LEN};

/// Phase length and warm-up.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub secs: Duration,
}

fn check_len(path: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("GET {path}: body {got} bytes, expected {want}");
    }
    Ok(())
}

async fn collect(handles: Vec<tokio::task::JoinHandle<Rec>>) -> Result<PhaseResult> {
    let mut recs = Vec::with_capacity(handles.len());
    for h in join_all(handles).await {
        recs.push(h.map_err(|e| anyhow!("worker task: {e}"))?);
    }
    Ok(PhaseResult::merge(recs))
}

/// `conns` keep-alive connections, each with one `GET /small` in flight at a time.
pub async fn keep_alive(
    target: &Target,
    proto: Proto,
    conns: usize,
    t: Timing,
) -> Result<PhaseResult> {
    let opened = join_all((0..conns).map(|_| target.open(proto))).await;
    let mut ready = Vec::with_capacity(conns);
    for c in opened {
        ready.push(c.with_context(|| {
            format!(
                "opening {} {} connection",
                target.route.label(),
                proto.label()
            )
        })?);
    }
    let win = Window::new(t.warmup, t.secs);
    let handles = ready
        .into_iter()
        .map(|mut conn| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut rec = Rec::new(win);
                loop {
                    let t0 = Instant::now();
                    if !rec.go_on(t0, false) {
                        break;
                    }
                    match conn
                        .get("/small")
                        .await
                        .and_then(|n| check_len("/small", n, SMALL_LEN))
                    {
                        Ok(()) => rec.ok(t0, None, SMALL_LEN),
                        Err(e) => {
                            rec.err(&e);
                            // The connection may be dead: replace it, or give up on this worker.
                            match target.open(proto).await {
                                Ok(c) => conn = c,
                                Err(e) => {
                                    rec.err(&e);
                                    break;
                                }
                            }
                        }
                    }
                }
                rec
            })
        })
        .collect();
    collect(handles).await
}

/// `workers` loops of: new TCP (+CONNECT), a TLS handshake (full, unless the target resumes)
/// and one `GET /small`, then close; a target with fresh names stops when they are used up.
/// `hs` samples are the connect → TLS-established part.
pub async fn new_conn(target: &Target, workers: usize, t: Timing) -> Result<PhaseResult> {
    let win = Window::new(t.warmup, t.secs);
    let handles = (0..workers)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut rec = Rec::new(win);
                loop {
                    let t0 = Instant::now();
                    if !rec.go_on(t0, false) || target.names_exhausted() {
                        break;
                    }
                    let r = async {
                        let (mut conn, hs) = target.open_timed(Proto::H1).await?;
                        check_len("/small", conn.get("/small").await?, SMALL_LEN)?;
                        Ok::<_, anyhow::Error>(hs)
                    }
                    .await;
                    match r {
                        Ok(hs) => rec.ok(t0, Some(hs), SMALL_LEN),
                        Err(e) if e.is::<NamesUsedUp>() => break,
                        Err(e) => rec.err(&e),
                    }
                }
                rec
            })
        })
        .collect();
    collect(handles).await
}

/// One client, sequentially: TCP connect (+CONNECT) until TLS is established, then close.
pub async fn connect_latency(target: &Target, t: Timing) -> Result<PhaseResult> {
    let win = Window::new(t.warmup, t.secs);
    let target = target.clone();
    let h = tokio::spawn(async move {
        let mut rec = Rec::new(win);
        loop {
            let t0 = Instant::now();
            if !rec.go_on(t0, false) {
                break;
            }
            match target.open_tls(Proto::H1).await {
                Ok(tls) => {
                    rec.ok(t0, Some(t0.elapsed()), 0);
                    drop(tls);
                }
                Err(e) => rec.err(&e),
            }
        }
        rec
    });
    collect(vec![h]).await
}

/// One keep-alive connection (one stream at a time over HTTP/2) downloading `/large` back to
/// back (at least once).
pub async fn throughput(target: &Target, proto: Proto, t: Timing) -> Result<PhaseResult> {
    let mut conn = target
        .open(proto)
        .await
        .with_context(|| format!("opening {} connection", target.route.label()))?;
    let win = Window::new(t.warmup, t.secs);
    let h = tokio::spawn(async move {
        let mut rec = Rec::new(win);
        loop {
            let t0 = Instant::now();
            if !rec.go_on(t0, true) {
                break;
            }
            match conn
                .get("/large")
                .await
                .and_then(|n| check_len("/large", n, LARGE_LEN))
            {
                Ok(()) => rec.ok(t0, None, LARGE_LEN),
                Err(e) => {
                    rec.err(&e);
                    break;
                }
            }
        }
        rec
    });
    collect(vec![h]).await
}

/// Cold leaf mints on a fresh CA: `count` distinct names, one at a time. Returns sorted µs
/// samples and the total time.
pub async fn mint(count: usize) -> Result<(Vec<u32>, Duration)> {
    tokio::task::spawn_blocking(move || -> Result<(Vec<u32>, Duration)> {
        let ca = egress_ca::DeploymentCa::generate(&egress_ca::CaOptions::new("bench"))?;
        let ttl = Duration::from_secs(86400);
        // Warm the code path (and allocator) with names outside the measured set.
        for i in 0..10 {
            egress_ca::mint_leaf(&ca, &format!("warm{i}.mint.bench.test"), ttl)?;
        }
        let mut samples = Vec::with_capacity(count);
        let all = Instant::now();
        for i in 0..count {
            let name = format!("host{i}.mint.bench.test");
            let t0 = Instant::now();
            let leaf = egress_ca::mint_leaf(&ca, &name, ttl)?;
            samples.push(micros(t0.elapsed()));
            drop(leaf);
        }
        let total = all.elapsed();
        samples.sort_unstable();
        Ok((samples, total))
    })
    .await
    .map_err(|e| anyhow!("mint task: {e}"))?
}

/// Saturating nanoseconds.
fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// Handle verification: a fresh `HandleAuthority` in `dir`, one handle minted for `bench-key`
/// on `inject.test`, then `count` calls of `verify` (at `SystemTime::now()`) followed by
/// `authorize("bench-key", "inject.test", "GET", "/small")`, one at a time. Returns sorted
/// per-call samples in **nanoseconds** and the total time.
pub async fn verify(dir: std::path::PathBuf, count: usize) -> Result<(Vec<u32>, Duration)> {
    tokio::task::spawn_blocking(move || -> Result<(Vec<u32>, Duration)> {
        let auth = egress_handle::HandleAuthority::open(&dir, Duration::from_secs(3600))
            .with_context(|| format!("opening a handle authority in {}", dir.display()))?;
        let minted = auth
            .mint(&egress_handle::MintRequest {
                credentials: vec!["bench-key".into()],
                ttl: Duration::from_secs(600),
                session: Some("bench".into()),
                sandbox: None,
                host: Some("inject.test".into()),
                methods: None,
                path_prefixes: None,
            })
            .context("minting the bench handle")?;
        let handle = minted.handle.as_str();
        let call = || -> Result<()> {
            let claims = auth
                .verify(handle, SystemTime::now())
                .context("verify refused the bench handle")?;
            claims
                .authorize("bench-key", "inject.test", "GET", "/small")
                .context("authorize refused the bench handle")?;
            Ok(())
        };
        // Warm the code path (and allocator).
        for _ in 0..(count / 10).clamp(10, 1000) {
            call()?;
        }
        let mut samples = Vec::with_capacity(count);
        let all = Instant::now();
        for _ in 0..count {
            let t0 = Instant::now();
            call()?;
            samples.push(nanos(t0.elapsed()));
        }
        let total = all.elapsed();
        samples.sort_unstable();
        Ok((samples, total))
    })
    .await
    .map_err(|e| anyhow!("verify task: {e}"))?
}

/// One core re-encrypting as the bump does per byte of a download: each 16 KiB TLS record is
/// opened (AES-256-GCM, what the upstream leg receives) and sealed again (what the guest leg
/// sends), with ring, the proxy's crypto provider. Each round also copies the 16 KiB record
/// back in place (opening decrypts it), much as the proxy copies a record out of the socket.
/// Runs `total` bytes of plaintext; returns the time taken.
pub async fn reencrypt(total: usize) -> Result<Duration> {
    tokio::task::spawn_blocking(move || -> Result<Duration> {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = |b: u8| -> Result<LessSafeKey> {
            Ok(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &[b; 32]).map_err(|_| anyhow!("AES key"))?,
            ))
        };
        let (upstream, guest) = (key(1)?, key(2)?);
        const RECORD: usize = 16 * 1024;
        let aad = [23u8, 3, 3, 0x40, 0x11];
        let nonce = |n: u64| {
            let mut b = [0u8; 12];
            b[4..].copy_from_slice(&n.to_be_bytes());
            Nonce::assume_unique_for_key(b)
        };
        // A record as the upstream sent it: plaintext sealed with the upstream leg's key.
        let mut wire = vec![0x5a_u8; RECORD];
        upstream
            .seal_in_place_append_tag(nonce(0), Aad::from(&aad), &mut wire)
            .map_err(|_| anyhow!("seal"))?;
        let mut buf = wire.clone();
        let t0 = Instant::now();
        let mut n = 0u64;
        while (n as usize) * RECORD < total {
            buf.copy_from_slice(&wire);
            let plain = upstream
                .open_in_place(nonce(0), Aad::from(&aad), &mut buf)
                .map_err(|_| anyhow!("open"))?;
            let tag = guest
                .seal_in_place_separate_tag(nonce(n), Aad::from(&aad), plain)
                .map_err(|_| anyhow!("seal"))?;
            std::hint::black_box(&tag);
            n += 1;
        }
        Ok(t0.elapsed())
    })
    .await
    .map_err(|e| anyhow!("re-encryption task: {e}"))?
}
