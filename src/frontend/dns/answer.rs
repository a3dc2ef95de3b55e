//! One query in, one decision out: parse, judge, look up through the dialer, build the reply,
//! log and count. Transport-free (the caller frames and sends the bytes).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::guard;
use crate::config::defaults;
use crate::net::dial::DialError;
use crate::net::host::Host;
use crate::state::Shared;

/// Log target of guest-resolver decisions (`log.level: egress_edge::dns=info`).
pub const TARGET: &str = "egress_edge::dns";
/// Longest name written to a log line, in characters.
const LOGGED_NAME_LEN: usize = 96;
/// UDP reply limit without EDNS (RFC 1035) and the most we offer with it (DNS flag day 2020).
const UDP_PLAIN: usize = 512;
const UDP_EDNS_MAX: u16 = 1232;

/// How the query came in: it bounds the size of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The closed set of decisions (the `decision` field and metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// NOERROR with at least one address.
    Answered,
    /// NOERROR, no address of the asked family.
    NoData,
    Refused,
    ServFail,
    FormErr,
    NotImp,
    /// No reply at all (unreadable input, a response sent to us, overload).
    Dropped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Answered => "answered",
            Verdict::NoData => "nodata",
            Verdict::Refused => "refused",
            Verdict::ServFail => "servfail",
            Verdict::FormErr => "formerr",
            Verdict::NotImp => "notimp",
            Verdict::Dropped => "dropped",
        }
    }

    fn rcode(self) -> ResponseCode {
        match self {
            Verdict::Answered | Verdict::NoData | Verdict::Dropped => ResponseCode::NoError,
            Verdict::Refused => ResponseCode::Refused,
            Verdict::ServFail => ResponseCode::ServFail,
            Verdict::FormErr => ResponseCode::FormErr,
            Verdict::NotImp => ResponseCode::NotImp,
        }
    }
}

/// The facts of one decision, emitted once as a log event and a metric.
#[derive(Debug)]
pub struct DnsEvent {
    pub client: SocketAddr,
    pub name: String,
    pub qtype: String,
    pub verdict: Verdict,
    pub reason: &'static str,
    pub rule: String,
    /// The sandbox the client's address belongs to, if any.
    pub sandbox: Option<std::sync::Arc<str>>,
    pub answers: usize,
}

impl DnsEvent {
    fn new(client: SocketAddr) -> DnsEvent {
        DnsEvent {
            client,
            name: String::new(),
            qtype: String::new(),
            verdict: Verdict::Dropped,
            reason: "",
            rule: String::new(),
            sandbox: None,
            answers: 0,
        }
    }

    /// The bounded `qtype` metric label.
    fn qtype_label(&self) -> &'static str {
        match self.qtype.as_str() {
            "A" => "a",
            "AAAA" => "aaaa",
            _ => "other",
        }
    }

    pub fn emit(&self, shared: &Shared, elapsed: Duration) {
        tracing::info!(
            target: TARGET,
            client = tracing::field::display(&self.client),
            name = egress_handle::redact_in(&self.name).as_ref(),
            qtype = self.qtype.as_str(),
            decision = self.verdict.as_str(),
            rcode = self.verdict.rcode().to_str(),
            reason = self.reason,
            rule = self.rule.as_str(),
            sandbox = self.sandbox.as_deref().unwrap_or(""),
            answers = self.answers,
            duration_ms = elapsed.as_millis() as u64,
            "dns"
        );
        shared.metrics.dns_query(
            self.qtype_label(),
            self.verdict.as_str(),
            elapsed.as_secs_f64(),
        );
    }
}

/// A query that passed the checks that need no policy.
struct Asked {
    host: Host,
    v6: bool,
}

/// Answers one request; `None` means stay silent. Always emits one event.
pub async fn handle(
    shared: &Shared,
    client: SocketAddr,
    bytes: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut ev = DnsEvent::new(client);
    let reply = decide(shared, bytes, transport, &mut ev).await;
    ev.emit(shared, start.elapsed());
    reply
}

async fn decide(
    shared: &Shared,
    bytes: &[u8],
    transport: Transport,
    ev: &mut DnsEvent,
) -> Option<Vec<u8>> {
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            ev.reason = "malformed";
            return match Header::read(&mut BinDecoder::new(bytes)) {
                Ok(h) if h.metadata.message_type == MessageType::Query => {
                    ev.verdict = Verdict::FormErr;
                    let m =
                        Message::error_msg(h.metadata.id, h.metadata.op_code, ev.verdict.rcode());
                    m.to_vec().ok()
                }
                _ => None,
            };
        }
    };
    if request.metadata.message_type != MessageType::Query {
        ev.reason = "not_a_query";
        return None;
    }
    let (verdict, ips) = match classify(&request, ev) {
        Err(v) => (v, Vec::new()),
        Ok(asked) => lookup(shared, &asked, ev).await,
    };
    ev.verdict = verdict;
    ev.answers = ips.len();
    let snap = shared.snapshot();
    let ttl = snap
        .config
        .dns
        .as_ref()
        .map_or(defaults::DNS_TTL, |d| d.ttl)
        .as_secs()
        .clamp(1, u64::from(u32::MAX)) as u32;
    encode(&respond(&request, verdict, &ips, ttl), &request, transport)
}

/// The checks that need no policy: opcode, one question, class, type, a valid name.
fn classify(request: &Message, ev: &mut DnsEvent) -> Result<Asked, Verdict> {
    if request.metadata.op_code != OpCode::Query {
        ev.reason = "opcode";
        return Err(Verdict::NotImp);
    }
    let [query] = request.queries.as_slice() else {
        ev.reason = "question_count";
        return Err(Verdict::FormErr);
    };
    let mut shown = query.name().to_ascii().to_ascii_lowercase();
    if shown.len() > 1 {
        shown.truncate(shown.trim_end_matches('.').len());
    }
    ev.name = truncate_chars(&shown, LOGGED_NAME_LEN);
    ev.qtype = query.query_type().to_string();
    if query.query_class() != DNSClass::IN {
        ev.reason = "qclass";
        return Err(Verdict::Refused);
    }
    let v6 = match query.query_type() {
        RecordType::A => false,
        RecordType::AAAA => true,
        _ => {
            ev.reason = "qtype";
            return Err(Verdict::Refused);
        }
    };
    let Some(host) = host_of(query) else {
        ev.reason = "invalid_name";
        return Err(Verdict::Refused);
    };
    Ok(Asked { host, v6 })
}

/// The queried name as the policy sees it: only letters, digits, `-` and `_` in labels (so
/// escapes and dots inside labels never reach matching), and a name, not an address.
fn host_of(query: &Query) -> Option<Host> {
    let name = query.name();
    if name.is_root() {
        return None;
    }
    let mut text = String::with_capacity(name.len());
    for label in name.iter() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    match Host::parse(&text) {
        Ok(h @ Host::Name(_)) => Some(h),
        _ => None,
    }
}

/// Policy, guard, then the dialer's vetted resolution.
async fn lookup(shared: &Shared, asked: &Asked, ev: &mut DnsEvent) -> (Verdict, Vec<IpAddr>) {
    if shared.kill.is_enabled() {
        ev.reason = "kill_switch";
        return (Verdict::Refused, Vec::new());
    }
    let snap = shared.snapshot();
    // Guests are told only the names their own profile lets through.
    let sandbox = shared.sandboxes.by_source(ev.client.ip());
    ev.sandbox = sandbox.as_ref().map(|s| s.id.clone());
    if sandbox.is_none() && snap.config.proxy.require_sandbox {
        ev.reason = "no_sandbox";
        return (Verdict::Refused, Vec::new());
    }
    let policy = snap.config.policy.rules_for(
        sandbox
            .as_deref()
            .map(crate::state::sandboxes::Sandbox::who),
    );
    match policy.resolvable(&asked.host) {
        Ok(d) => ev.rule = d.rule_id.to_string(),
        Err(d) => {
            ev.rule = d.rule_id.to_string();
            ev.reason = "policy";
            return (Verdict::Refused, Vec::new());
        }
    }
    let name = asked.host.as_name().unwrap_or_default();
    if !policy.names_exactly(&asked.host) {
        let max_label = snap
            .config
            .dns
            .as_ref()
            .map_or(defaults::DNS_MAX_LABEL_LEN, |d| d.max_label_len);
        if let Err(s) = guard::check(name, max_label) {
            ev.reason = s.as_str();
            return (Verdict::Refused, Vec::new());
        }
    }
    let deadline = snap.config.proxy.connect_timeout;
    let vetted = match tokio::time::timeout(deadline, snap.dialer.vet(&asked.host)).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Timeout {
            host: name.to_owned(),
            timeout: deadline,
        }),
    };
    let ips = match vetted {
        Ok(ips) => ips,
        Err(e) => {
            let (verdict, reason) = match e {
                DialError::AddressDenied { .. } => (Verdict::Refused, "address_denied"),
                DialError::Timeout { .. } => (Verdict::ServFail, "timeout"),
                DialError::NoAddress { .. } => (Verdict::ServFail, "no_address"),
                _ => (Verdict::ServFail, "resolve_failed"),
            };
            tracing::debug!(target: TARGET, error = %e, "guest resolver lookup failed");
            ev.reason = reason;
            return (verdict, Vec::new());
        }
    };
    let given: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| ip.is_ipv6() == asked.v6)
        .collect();
    if given.is_empty() {
        ev.reason = "no_address_of_type";
        return (Verdict::NoData, given);
    }
    shared.answers.record(name, &given);
    ev.reason = "allowed";
    (Verdict::Answered, given)
}

/// The reply to `request`: its id, opcode, RD and question, the verdict's rcode, and one
/// A or AAAA record per address (owner name as the guest spelled it).
fn respond(request: &Message, verdict: Verdict, ips: &[IpAddr], ttl: u32) -> Message {
    let mut m = Message::response(request.metadata.id, request.metadata.op_code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = request.metadata.checking_disabled;
    m.metadata.response_code = verdict.rcode();
    if let [query] = request.queries.as_slice() {
        m.add_query(query.clone());
        for ip in ips {
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            m.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
        }
    }
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_EDNS_MAX);
        m.set_edns(edns);
    }
    m
}

/// Encodes `reply`; over UDP, a reply larger than the client takes is sent truncated (TC, no
/// answers) so the client retries over TCP.
fn encode(reply: &Message, request: &Message, transport: Transport) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => UDP_PLAIN,
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, UDP_EDNS_MAX)),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    reply.truncate().to_vec().ok()
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn request(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn client() -> SocketAddr {
        "127.0.0.1:5".parse().unwrap()
    }

    #[test]
    fn classify_table() {
        let mut two = request("a.test.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.test.").unwrap(),
            RecordType::A,
        ));
        let mut none = request("a.test.", RecordType::A);
        none.queries.clear();
        let mut notify = request("a.test.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        let mut chaos = request("version.bind.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let raw = |labels: &[&[u8]]| {
            let mut m = request("a.test.", RecordType::A);
            let name = Name::from_labels(labels.iter().copied()).unwrap();
            m.queries[0].set_name(name);
            m
        };
        let odd = raw(&[b"a b", b"test"]);
        let dotted = raw(&[b"a.b", b"test"]);
        type Case = (&'static str, Message, Result<bool, (Verdict, &'static str)>);
        let cases: Vec<Case> = vec![
            ("A", request("Api.Example.COM.", RecordType::A), Ok(false)),
            (
                "AAAA",
                request("api.example.com", RecordType::AAAA),
                Ok(true),
            ),
            (
                "TXT",
                request("a.test.", RecordType::TXT),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "ANY",
                request("a.test.", RecordType::ANY),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "NULL",
                request("a.test.", RecordType::NULL),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "MX",
                request("a.test.", RecordType::MX),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "SRV",
                request("a.test.", RecordType::SRV),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "PTR",
                request("1.0.0.127.in-addr.arpa.", RecordType::PTR),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "HTTPS",
                request("a.test.", RecordType::HTTPS),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "SVCB",
                request("a.test.", RecordType::SVCB),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "unknown type",
                request("a.test.", RecordType::Unknown(65_000)),
                Err((Verdict::Refused, "qtype")),
            ),
            (
                "two questions",
                two,
                Err((Verdict::FormErr, "question_count")),
            ),
            (
                "no question",
                none,
                Err((Verdict::FormErr, "question_count")),
            ),
            ("opcode", notify, Err((Verdict::NotImp, "opcode"))),
            ("class", chaos, Err((Verdict::Refused, "qclass"))),
            (
                "root",
                request(".", RecordType::A),
                Err((Verdict::Refused, "invalid_name")),
            ),
            (
                "address as name",
                request("127.0.0.1.", RecordType::A),
                Err((Verdict::Refused, "invalid_name")),
            ),
            ("odd bytes", odd, Err((Verdict::Refused, "invalid_name"))),
            (
                "dot inside a label",
                dotted,
                Err((Verdict::Refused, "invalid_name")),
            ),
        ];
        for (case, m, want) in cases {
            let mut ev = DnsEvent::new(client());
            let got = classify(&m, &mut ev)
                .map(|a| a.v6)
                .map_err(|v| (v, ev.reason));
            assert_eq!(got, want, "case `{case}`");
        }
    }

    #[test]
    fn names_are_normalized_for_policy_and_logs() {
        let m = request("Api.Example.COM.", RecordType::A);
        let mut ev = DnsEvent::new(client());
        let asked = classify(&m, &mut ev).ok().unwrap();
        assert_eq!(asked.host, Host::Name("api.example.com".into()));
        assert_eq!(ev.name, "api.example.com");
        assert_eq!(ev.qtype, "A");
        assert_eq!(ev.qtype_label(), "a");
        let long = vec!["a".repeat(60); 3].join(".");
        let m = request(&long, RecordType::AAAA);
        let mut ev = DnsEvent::new(client());
        let _ = classify(&m, &mut ev);
        assert_eq!(ev.name.chars().count(), LOGGED_NAME_LEN + 1);
        assert!(ev.name.ends_with('…'));
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "abc…");
    }

    #[test]
    fn responses_echo_the_question_and_carry_the_verdict() {
        let req = request("Up.Test.", RecordType::A);
        let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let cases: &[(Verdict, &[IpAddr], ResponseCode, usize)] = &[
            (Verdict::Answered, &ips, ResponseCode::NoError, 2),
            (Verdict::NoData, &[], ResponseCode::NoError, 0),
            (Verdict::Refused, &[], ResponseCode::Refused, 0),
            (Verdict::ServFail, &[], ResponseCode::ServFail, 0),
            (Verdict::FormErr, &[], ResponseCode::FormErr, 0),
            (Verdict::NotImp, &[], ResponseCode::NotImp, 0),
        ];
        for (verdict, ips, rcode, n) in cases {
            let bytes = encode(&respond(&req, *verdict, ips, 30), &req, Transport::Udp).unwrap();
            let back = Message::from_vec(&bytes).unwrap();
            assert_eq!(back.metadata.id, req.metadata.id);
            assert_eq!(back.metadata.message_type, MessageType::Response);
            assert_eq!(back.metadata.response_code, *rcode, "{verdict:?}");
            assert!(back.metadata.recursion_desired);
            assert_eq!(back.queries, req.queries);
            assert_eq!(back.answers.len(), *n);
            for r in &back.answers {
                assert_eq!(r.ttl, 30);
                assert_eq!(r.name.to_ascii(), "Up.Test.");
            }
        }
    }

    #[test]
    fn oversized_udp_replies_are_truncated() {
        let req = request("many.test.", RecordType::AAAA);
        let ips: Vec<IpAddr> = (0..40u16)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)))
            .collect();
        let reply = respond(&req, Verdict::Answered, &ips, 30);
        let udp = Message::from_vec(&encode(&reply, &req, Transport::Udp).unwrap()).unwrap();
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        let tcp = Message::from_vec(&encode(&reply, &req, Transport::Tcp).unwrap()).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 40);
    }

    #[test]
    fn edns_is_answered_with_edns() {
        let mut req = request("a.test.", RecordType::A);
        let mut e = Edns::new();
        e.set_max_payload(4096);
        req.set_edns(e);
        let reply = respond(&req, Verdict::NoData, &[], 30);
        let back = Message::from_vec(&encode(&reply, &req, Transport::Udp).unwrap()).unwrap();
        assert_eq!(back.edns.map(|e| e.max_payload()), Some(UDP_EDNS_MAX));
    }
}
