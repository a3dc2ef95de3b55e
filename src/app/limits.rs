//! The process's file-descriptor limit: raised to the hard limit at start, and checked against
//! `proxy.max_connections` (each guest connection can hold its own socket, an upstream socket
//! and a pooled upstream connection). It only adjusts and reports; running out at run time is
//! handled where descriptors are used (`frontend::accept`, the dialer's refusal mapping).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors a guest connection may hold at once.
const PER_CONNECTION: u64 = 3;
/// Descriptors the process needs besides connections (runtime, listeners, files, logs).
const BASE: u64 = 256;

/// The soft and hard limits after the attempt to raise the soft one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and warns when `max_connections` does
/// not fit in it.
pub fn raise_nofile(max_connections: usize) -> Option<NoFile> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            return None;
        }
    };
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the soft RLIMIT_NOFILE");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the soft RLIMIT_NOFILE");
                soft
            }
        }
    } else {
        soft
    };
    let need = (max_connections as u64)
        .saturating_mul(PER_CONNECTION)
        .saturating_add(BASE);
    if soft < need {
        tracing::warn!(
            max_connections,
            nofile = soft,
            needed = need,
            "proxy.max_connections does not fit in the file-descriptor limit: guests beyond it get 503 proxy_overloaded; raise the limit (ulimit -n, LimitNOFILE=) or lower proxy.max_connections"
        );
    }
    Some(NoFile { soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let got = raise_nofile(1).unwrap();
        assert_eq!(got.soft, got.hard);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, hard), (got.soft, got.hard));
    }
}
