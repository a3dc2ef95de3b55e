//! Entry points for the fuzz targets in `fuzz/` and for their replay on stable
//! (`tests/it/fuzz_replay.rs`): each function is one target's whole body, so the fuzzer and the
//! replay test run the same code. Not an API: hidden, unversioned, and may change with any
//! commit. Nothing here opens a socket or touches the network.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use crate::frontend::dns::Transport;
use crate::frontend::dns::answer;
use crate::frontend::{forward_proxy, transparent};
use crate::net::dial::{BoxFuture, Connect, Resolve};
use crate::observe::metrics::Metrics;
use crate::policy::path::{PathPattern, normalize};
use crate::rung::sni;
use crate::state::{Shared, Snapshot, Sources};

/// The CONNECT authority parser: the strict port reading, checked against `http`'s own.
pub fn connect_authority(data: &[u8]) {
    let Ok(authority) = http::uri::Authority::try_from(data) else {
        return;
    };
    if let Ok(Some(port)) = forward_proxy::explicit_port(&authority) {
        assert_eq!(authority.port_u16(), Some(port), "{authority}");
    }
    if let Ok(uri) = http::Uri::try_from(data)
        && let Some(a) = uri.authority()
    {
        let _ = forward_proxy::explicit_port(a);
    }
}

/// The transparent listener's Host reading, from a `Host` header value and from an
/// absolute-form request target.
pub fn transparent_host(data: &[u8]) {
    if let Ok(value) = http::HeaderValue::from_bytes(data)
        && let Ok(text) = value.to_str()
        && let Ok(host) = transparent::host_in(text)
    {
        assert!(!host.contains('@'));
    }
    if let Ok(uri) = http::Uri::try_from(data)
        && let Some(a) = uri.authority()
    {
        let _ = transparent::host_in(a.as_str());
    }
}

/// The transparent listener's first-bytes classifier: once it decides, more bytes never
/// change the decision.
pub fn classify(data: &[u8]) {
    let mut decided = None;
    for end in 0..=data.len().min(64) {
        let got = transparent::classify(&data[..end]);
        match (decided, got) {
            (None, g) => decided = g,
            (Some(d), g) => assert_eq!(Some(d), g, "classification changed at byte {end}"),
        }
    }
    let _ = transparent::classify(data);
}

/// The ClientHello/SNI reader over an in-memory guest that sends the input in chunks (the
/// first byte picks the chunk size), then closes.
pub fn client_hello(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let mut guest = Chunked {
        data: rest,
        chunk: usize::from(chunk).max(1) * 16,
    };
    let result = runtime().block_on(sni::read_client_hello(&mut guest, Duration::from_secs(10)));
    if let Ok(hello) = result {
        assert!(
            rest.starts_with(&hello.bytes),
            "the bytes read are the bytes sent"
        );
    }
}

/// The config loader.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse_str(text, "fuzz");
    }
}

/// The request-path normaliser and path patterns. The input as a request target: a normalized
/// path starts with `/`, has no empty, `.` or `..` segment, backslash or control character, and
/// normalises to itself (once the `%`, `;`, `?` and `#` it holds as data are escaped again). The
/// input as a pattern: it reads back from its printed form, is itself a normalized path and
/// matches itself. A first line as a pattern and the rest as a target: a pattern without `*`
/// matches exactly the paths it is a segment-boundary string prefix of.
pub fn policy_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = normalize(text) {
        check_normalized(text, &path);
    }
    if let Ok(pattern) = PathPattern::parse(text) {
        let printed = pattern.to_string();
        assert_eq!(
            PathPattern::parse(&printed).as_ref(),
            Ok(&pattern),
            "{text:?}"
        );
        assert_eq!(
            normalize(&printed).as_deref(),
            Ok(printed.as_str()),
            "a pattern reads as a normalized path"
        );
        assert!(
            pattern.matches(&printed),
            "{printed:?} does not match itself"
        );
    }
    if let Some((pattern, target)) = text.split_once('\n')
        && let Ok(pattern) = PathPattern::parse(pattern)
        && let Ok(path) = normalize(target)
    {
        let raw = pattern.to_string();
        let matched = pattern.matches(&path);
        if !raw.contains('*') {
            let prefix = if raw.ends_with('/') {
                path.starts_with(&raw)
            } else {
                path.strip_prefix(raw.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            };
            assert_eq!(matched, prefix, "{raw:?} vs {path:?}");
        }
    }
}

/// The shape and fixed-point checks on `path`, which `normalize(text)` returned.
fn check_normalized(text: &str, path: &str) {
    assert!(path.starts_with('/'), "{text:?} -> {path:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!path.contains(bad), "{text:?} -> {path:?}");
    }
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "{text:?} -> {path:?}"
    );
    assert!(
        !path.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f),
        "{text:?} -> {path:?}"
    );
    if !path.contains(['%', ';', '?', '#']) {
        assert_eq!(normalize(path).as_deref(), Ok(path), "{text:?} -> {path:?}");
    }
    let escaped = path
        .replace('%', "%25")
        .replace(';', "%3B")
        .replace('?', "%3F")
        .replace('#', "%23");
    assert_eq!(
        normalize(&escaped).as_deref(),
        Ok(path),
        "{text:?} -> {path:?}"
    );
    if let Ok(itself) = PathPattern::parse(path) {
        assert!(itself.matches(path), "{text:?} -> {path:?}");
    }
}

/// The guest resolver: one query message's bytes to a response, over UDP and TCP rules, with
/// a policy that allows some names and a resolver that answers from a table (no network).
pub fn dns(data: &[u8]) {
    let shared = dns_shared();
    let client = SocketAddr::from(([127, 0, 0, 1], 5353));
    for transport in [Transport::Udp, Transport::Tcp] {
        let reply = runtime().block_on(answer::handle(shared, client, data, transport));
        if let Some(reply) = reply {
            let parsed = hickory_proto::op::Message::from_vec(&reply);
            assert!(parsed.is_ok(), "the reply does not parse: {parsed:?}");
            if transport == Transport::Udp {
                assert!(reply.len() <= 4096, "a UDP reply of {} bytes", reply.len());
            }
        }
    }
}

/// The DNS target's policy: exact names, a wildcard, a denied name and data-looking names.
pub const DNS_CONFIG: &str = "
dns: { listen: 127.0.0.1:0, ttl: 7s }
network: { hosts: { upstream.test: 127.0.0.1, six.test: '::1', both.test: [127.0.0.1, '::1'], private.test: 10.0.0.7, public.test: 93.184.215.14 } }
destinations:
  - { host: upstream.test }
  - { host: six.test }
  - { host: both.test, ports: [8443] }
  - { host: private.test }
  - { host: public.test }
  - { host: denied.test, rung: deny }
  - { host: '*.wild.test' }
default_rung: deny
";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("fuzzing runtime: {e}"),
        }
    })
}

fn dns_shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let config = match crate::config::parse_str(DNS_CONFIG, "fuzz") {
            Ok(c) => Arc::new(c),
            Err(e) => panic!("DNS_CONFIG: {e}"),
        };
        let sources = Sources {
            resolver: Arc::new(TableResolver),
            connector: Arc::new(NoConnector),
            secrets: None,
            pool: crate::upstream::budget::PoolBudget::default(),
        };
        let _guard = runtime().enter();
        match Snapshot::build(config, &sources) {
            Ok(snap) => Shared::new(snap, Metrics::new()),
            Err(e) => panic!("snapshot: {e}"),
        }
    })
}

/// Answers from the name alone: some names get public addresses of either family, some a
/// denied one, some none, some fail.
#[derive(Debug)]
struct TableResolver;

impl Resolve for TableResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let pick = name.bytes().fold(0u8, |a, b| a.wrapping_add(b)) % 5;
        Box::pin(async move {
            match pick {
                0 => Ok(vec![IpAddr::from([93, 184, 215, 14])]),
                1 => Ok(vec![IpAddr::from([
                    0x2606, 0x2800, 0x21f, 0xcb07, 0, 0, 0, 0x6820,
                ])]),
                2 => Ok(vec![
                    IpAddr::from([10, 1, 2, 3]),
                    IpAddr::from([93, 184, 215, 15]),
                ]),
                3 => Ok(Vec::new()),
                _ => Err(io::Error::other("no such name")),
            }
        })
    }
}

#[derive(Debug)]
struct NoConnector;

impl Connect for NoConnector {
    fn connect(&self, _addr: SocketAddr) -> BoxFuture<'_, io::Result<tokio::net::TcpStream>> {
        Box::pin(async { Err(io::Error::other("fuzzing never connects")) })
    }
}

/// A guest that sends its bytes `chunk` at a time, then closes.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl<'a> AsyncRead for Chunked<'a> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data: &'a [u8] = self.data;
        let n = self.chunk.min(data.len()).min(buf.remaining());
        let (now, later) = data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}
