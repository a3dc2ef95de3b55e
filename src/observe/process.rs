//! The proxy process's own resource use, read from `/proc/self` when metrics are scraped:
//! resident memory, open file descriptors and the descriptor limit. Operators watch these
//! against `proxy.max_connections` and the memory budget of the host; the soak suite reads
//! the same figures. Nothing here is sampled on the data path.

use nix::sys::resource::{Resource, getrlimit};

/// Resident set size in bytes (`VmRSS` of `/proc/self/status`), if the platform has it.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(kib * 1024)
}

/// File descriptors open now (entries of `/proc/self/fd`, less the one listing it).
pub fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// The soft `RLIMIT_NOFILE`: descriptors the process may hold (raised to the hard limit at
/// start).
pub fn max_fds() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tegress-edge\nVmHWM:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_rss_bytes("VmRSS:\t12 MB\n"), None);
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let rss = resident_bytes().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        // Other tests open and close files concurrently: only a lower bound is certain.
        let files: Vec<_> = (0..64).map(|_| tempfile::tempfile().unwrap()).collect();
        let open = open_fds().unwrap();
        assert!(open >= 64, "{open}");
        assert!(max_fds().unwrap() >= open);
        drop(files);
    }
}
