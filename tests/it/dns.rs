//! The guest resolver over real UDP and TCP sockets on loopback, with messages built by
//! hickory-proto (and `dig` as a real client when it is installed).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_edge::app::BuildOptions;
use egress_edge::net::dial::{BoxFuture, Resolve};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::common::*;

/// A resolver that records every name it is asked and answers 127.0.0.1 for all of them.
#[derive(Debug, Default)]
struct CountingResolver {
    asked: Mutex<Vec<String>>,
}

impl Resolve for CountingResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        self.asked.lock().unwrap().push(name.to_owned());
        Box::pin(async { Ok(vec![IpAddr::from([127, 0, 0, 1])]) })
    }
}

fn sixty() -> String {
    "a".repeat(60)
}

fn config(allow_loopback: bool) -> String {
    let allow = if allow_loopback {
        "allow: [127.0.0.1/32, '::1/128'], "
    } else {
        ""
    };
    format!(
        "state_dir: STATE_DIR
dns: {{ listen: 127.0.0.1:0, ttl: 7s }}
network: {{ {allow}hosts: {{ upstream.test: 127.0.0.1, six.test: '::1', both.test: [127.0.0.1, '::1'], private.test: 10.0.0.7, denied.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test }}
  - {{ host: six.test }}
  - {{ host: both.test, ports: [8443] }}
  - {{ host: private.test }}
  - {{ host: denied.test, rung: deny }}
  - {{ host: '*.wild.test' }}
  - {{ host: {long}.exact.test }}
default_rung: deny
",
        long = sixty()
    )
}

async fn start(allow_loopback: bool) -> (Proxy, Arc<CountingResolver>) {
    let resolver = Arc::new(CountingResolver::default());
    let opts = BuildOptions {
        resolver: Some(resolver.clone()),
        ..Default::default()
    };
    let proxy = Proxy::start_with(&config(allow_loopback), opts).await;
    (proxy, resolver)
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(1500), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp(server: SocketAddr, m: &Message) -> Message {
    let bytes = udp_raw(server, &m.to_vec().unwrap())
        .await
        .expect("no reply");
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.id, m.metadata.id);
    assert_eq!(reply.queries, m.queries);
    reply
}

async fn tcp_send(s: &mut TcpStream, m: &Message) -> Message {
    let bytes = m.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    let reply = Message::from_vec(&buf).unwrap();
    assert_eq!(reply.metadata.id, m.metadata.id);
    reply
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

#[tokio::test]
async fn allowed_names_are_answered_over_udp_and_recorded() {
    let (proxy, resolver) = start(true).await;
    let dns = proxy.dns.unwrap();
    let r = udp(dns, &query("upstream.test.", RecordType::A)).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert_eq!(addrs(&r), vec![IpAddr::from([127, 0, 0, 1])]);
    assert_eq!(r.answers[0].ttl, 7);
    assert!(
        proxy
            .shared
            .answers
            .answered("upstream.test", IpAddr::from([127, 0, 0, 1]))
    );
    // Case as the guest spelled it (0x20), names matched case-insensitively.
    let r = udp(dns, &query("UpStream.TEST.", RecordType::A)).await;
    assert_eq!(addrs(&r).len(), 1);
    assert_eq!(r.answers[0].name.to_ascii(), "UpStream.TEST.");
    // A v4-only name asked for AAAA: NOERROR, no answer (never REFUSED).
    let r = udp(dns, &query("upstream.test.", RecordType::AAAA)).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert!(r.answers.is_empty());
    // Each family gets its own subset.
    let r = udp(dns, &query("six.test.", RecordType::AAAA)).await;
    assert_eq!(addrs(&r), vec!["::1".parse::<IpAddr>().unwrap()]);
    let r = udp(dns, &query("both.test.", RecordType::A)).await;
    assert_eq!(addrs(&r), vec![IpAddr::from([127, 0, 0, 1])]);
    let r = udp(dns, &query("both.test.", RecordType::AAAA)).await;
    assert_eq!(addrs(&r), vec!["::1".parse::<IpAddr>().unwrap()]);
    // Through the resolver for a wildcard rule.
    let r = udp(dns, &query("pkg.wild.test.", RecordType::A)).await;
    assert_eq!(addrs(&r), vec![IpAddr::from([127, 0, 0, 1])]);
    assert_eq!(*resolver.asked.lock().unwrap(), vec!["pkg.wild.test"]);
    assert!(
        proxy
            .shared
            .answers
            .answered("pkg.wild.test", IpAddr::from([127, 0, 0, 1]))
    );
    proxy
        .wait_metric(r#"egress_edge_dns_queries_total{qtype="a",decision="answered"} 4"#)
        .await;
    proxy
        .wait_metric(r#"egress_edge_dns_queries_total{qtype="aaaa",decision="nodata"} 1"#)
        .await;
}

#[tokio::test]
async fn refusals() {
    let (proxy, resolver) = start(true).await;
    let dns = proxy.dns.unwrap();
    let long = format!("{}.wild.test.", sixty());
    let cases: &[(&str, &str, RecordType)] = &[
        ("deny rule", "denied.test.", RecordType::A),
        ("no rule, default deny", "evil.example.", RecordType::A),
        (
            "wildcard does not cover the apex",
            "wild.test.",
            RecordType::A,
        ),
        ("address in the deny set", "private.test.", RecordType::A),
        ("TXT", "upstream.test.", RecordType::TXT),
        ("ANY", "upstream.test.", RecordType::ANY),
        ("NULL", "upstream.test.", RecordType::NULL),
        ("MX", "upstream.test.", RecordType::MX),
        ("HTTPS", "upstream.test.", RecordType::HTTPS),
        ("PTR", "1.0.0.127.in-addr.arpa.", RecordType::PTR),
        ("60-character label", &long, RecordType::A),
        (
            "hex label",
            "4f3a9c0d2b7e8a16c0ffee.wild.test.",
            RecordType::A,
        ),
        (
            "base32 label",
            "nbswy3dpeb3w64tmmq.wild.test.",
            RecordType::AAAA,
        ),
    ];
    for (case, name, qtype) in cases {
        let r = udp(dns, &query(name, *qtype)).await;
        assert_eq!(rcode(&r), ResponseCode::Refused, "case `{case}`");
        assert!(r.answers.is_empty(), "case `{case}`");
    }
    // None of the suspicious names was looked up.
    assert!(
        resolver.asked.lock().unwrap().is_empty(),
        "{:?}",
        resolver.asked
    );
    // A rule naming the long label exactly is operator intent: it is looked up.
    let exact = format!("{}.exact.test.", sixty());
    let r = udp(dns, &query(&exact, RecordType::A)).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert_eq!(resolver.asked.lock().unwrap().len(), 1);
    proxy
        .wait_metric(r#"egress_edge_dns_queries_total{qtype="other",decision="refused"} 6"#)
        .await;
    proxy
        .wait_metric(r#"egress_edge_dns_queries_total{qtype="a",decision="refused"} 6"#)
        .await;
}

/// 127.0.0.1 is in the default deny set: without `network.allow` the same name is refused.
#[tokio::test]
async fn loopback_answers_need_an_allow() {
    let (proxy, _) = start(false).await;
    let r = udp(proxy.dns.unwrap(), &query("upstream.test.", RecordType::A)).await;
    assert_eq!(rcode(&r), ResponseCode::Refused);
    assert!(
        !proxy
            .shared
            .answers
            .answered("upstream.test", IpAddr::from([127, 0, 0, 1]))
    );
}

#[tokio::test]
async fn tcp_serves_several_queries_per_connection() {
    let (proxy, _) = start(true).await;
    let mut s = TcpStream::connect(proxy.dns.unwrap()).await.unwrap();
    let r = tcp_send(&mut s, &query("upstream.test.", RecordType::A)).await;
    assert_eq!(addrs(&r), vec![IpAddr::from([127, 0, 0, 1])]);
    let r = tcp_send(&mut s, &query("upstream.test.", RecordType::TXT)).await;
    assert_eq!(rcode(&r), ResponseCode::Refused);
    let r = tcp_send(&mut s, &query("six.test.", RecordType::AAAA)).await;
    assert_eq!(addrs(&r), vec!["::1".parse::<IpAddr>().unwrap()]);
    // Two queries in one write (pipelined) are answered in order.
    let (a, b) = (
        query("upstream.test.", RecordType::A),
        query("denied.test.", RecordType::A),
    );
    let mut both = Vec::new();
    for m in [&a, &b] {
        let bytes = m.to_vec().unwrap();
        both.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        both.extend_from_slice(&bytes);
    }
    s.write_all(&both).await.unwrap();
    for (m, want) in [(&a, ResponseCode::NoError), (&b, ResponseCode::Refused)] {
        let len = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.unwrap();
        let r = Message::from_vec(&buf).unwrap();
        assert_eq!((r.metadata.id, rcode(&r)), (m.metadata.id, want));
    }
}

#[tokio::test]
async fn garbage_gets_formerr_or_silence() {
    let (proxy, _) = start(true).await;
    let dns = proxy.dns.unwrap();
    // Too short for a header: silence.
    assert!(udp_raw(dns, &[0xde, 0xad, 0xbe]).await.is_none());
    // A header claiming a question that is not there: FORMERR with the id.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0x3f, b'x']);
    let r = Message::from_vec(&udp_raw(dns, &bad).await.unwrap()).unwrap();
    assert_eq!((r.metadata.id, rcode(&r)), (0x1234, ResponseCode::FormErr));
    // A response sent to the resolver is ignored.
    let mut resp = query("upstream.test.", RecordType::A);
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(udp_raw(dns, &resp.to_vec().unwrap()).await.is_none());
    // Two questions: FORMERR.
    let mut two = query("upstream.test.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("six.test.").unwrap(),
        RecordType::A,
    ));
    let r = Message::from_vec(&udp_raw(dns, &two.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(rcode(&r), ResponseCode::FormErr);
    // Garbage over TCP closes that connection only.
    let mut s = TcpStream::connect(dns).await.unwrap();
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    // Still serving.
    let r = udp(dns, &query("upstream.test.", RecordType::A)).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    proxy
        .wait_metric(r#"egress_edge_dns_queries_total{qtype="other",decision="formerr"} 2"#)
        .await;
    proxy
        .wait_metric(r#"egress_edge_dns_queries_total{qtype="other",decision="dropped"} 3"#)
        .await;
}

/// `dig` as a real client, over UDP and TCP, when it is installed (CI installs dnsutils).
#[tokio::test]
async fn dig_as_a_client() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("dig not installed; skipping");
        return;
    }
    let (proxy, _) = start(true).await;
    let dns = proxy.dns.unwrap();
    let dig = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("dig");
        cmd.arg(format!("@{}", dns.ip()))
            .arg("-p")
            .arg(dns.port().to_string())
            .args(["+time=2", "+tries=1"])
            .args(args);
        async move {
            let out = cmd.output().await.unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let out = dig(&["upstream.test", "A", "+short"]).await;
    assert_eq!(out.trim(), "127.0.0.1");
    let out = dig(&["upstream.test", "A", "+short", "+tcp"]).await;
    assert_eq!(out.trim(), "127.0.0.1");
    let out = dig(&["upstream.test", "TXT"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = dig(&["upstream.test", "AAAA"]).await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    let out = dig(&[&format!("{}.wild.test", sixty()), "A"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
}
