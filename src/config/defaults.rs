//! The defaults of every optional setting, named once. The typed config is filled from these;
//! the README and the built-in config quote the same values.

use std::net::SocketAddr;
use std::time::Duration;

pub const PROXY_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    3128,
));
pub const ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9901,
));
pub const MAX_CONNECTIONS: usize = 4096;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The smallest `max_header_bytes` accepted.
pub const MIN_HEADER_BYTES: usize = 8192;
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const LOG_LEVEL: &str = "info";
pub const STATE_DIR: &str = "./.egress-edge";
pub const LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
pub const LEAF_TTL_MIN: Duration = Duration::from_secs(3600);
pub const LEAF_TTL_MAX: Duration = Duration::from_secs(90 * 24 * 3600);
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Open connections (pooled, busy or being set up) one upstream client keeps to one host and
/// port; requests beyond them wait for a connection to come free.
pub const MAX_CONNECTIONS_PER_HOST: usize = 32;
/// Idle connections one upstream client keeps pooled per host and port.
pub const MAX_IDLE_PER_HOST: usize = 32;
/// Upstream connections open across all hosts and clients beyond which a new one is closed
/// after its request instead of pooled.
pub const MAX_POOLED_TOTAL: usize = 512;
/// How long the rest of an upload the upstream answered early is read and discarded before
/// the guest's HTTP/2 stream is reset (or its HTTP/1.1 connection closed).
pub const EARLY_RESPONSE_DRAIN: Duration = Duration::from_secs(1);
/// Concurrent HTTP/2 streams a guest may open on one bump session.
pub const BUMP_MAX_CONCURRENT_STREAMS: u32 = 100;
/// How long a request waits for a secret from a watched file.
pub const FILE_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request waits for a secret from an SDS stream.
pub const SDS_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
pub const SDS_CLUSTER: &str = "egress-edge";
pub const HANDLE_MAX_TTL: Duration = Duration::from_secs(3600);
pub const HANDLE_MAX_TTL_MIN: Duration = Duration::from_secs(1);
pub const HANDLE_MAX_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// TTL of guest-resolver answers: short, so a policy change reaches guests quickly.
pub const DNS_TTL: Duration = Duration::from_secs(30);
pub const DNS_TTL_MAX: Duration = Duration::from_secs(300);
/// Longest DNS label the guest resolver looks up for a name no rule names exactly.
pub const DNS_MAX_LABEL_LEN: usize = 40;
/// Sandboxes with their own `sandbox` metric label value; the rest share `other`.
pub const SANDBOX_METRIC_LABELS: usize = 100;
pub const SANDBOX_METRIC_LABELS_MAX: usize = 10_000;
