//! Replays the fuzz corpora and every kept crash input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same functions the cargo-fuzz targets call
//! (`egress_edge::fuzzing` and the handle and SDS crates' `fuzzing` modules), on stable.
//!
//! `write_seeds` (ignored) regenerates the seed corpora:
//! `cargo test --test it fuzz_replay::write_seeds -- --ignored`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egress_handle::{HandleAuthority, MintRequest};

type Body = fn(&[u8]);

/// Every fuzz target and its body; a corpus directory without an entry here fails the test.
const TARGETS: &[(&str, Body)] = &[
    ("connect_authority", egress_edge::fuzzing::connect_authority),
    ("transparent_host", egress_edge::fuzzing::transparent_host),
    ("classify", egress_edge::fuzzing::classify),
    ("client_hello", egress_edge::fuzzing::client_hello),
    ("config", egress_edge::fuzzing::config),
    ("policy_path", egress_edge::fuzzing::policy_path),
    ("dns", egress_edge::fuzzing::dns),
    ("handle_token", egress_handle::fuzzing::token),
    ("handle_detect", egress_handle::fuzzing::detect),
    ("sds_responses", egress_sds::fuzzing::responses),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn corpora_and_regressions_replay_without_panic() {
    let mut replayed = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for dir in dirs {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let Some((_, body)) = TARGETS.iter().find(|(t, _)| *t == name) else {
                panic!("{} has no replay entry", dir.display());
            };
            for file in std::fs::read_dir(&dir).unwrap() {
                let path = file.unwrap().path();
                if !path.is_file() {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| body(&data));
                assert!(outcome.is_ok(), "{} panics", path.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= TARGETS.len(), "only {replayed} inputs found");
}

#[test]
#[ignore = "regenerates fuzz/corpus; run by hand"]
fn write_seeds() {
    let corpus = fuzz_dir().join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    for (i, a) in [
        "pypi.org:443",
        "files.pythonhosted.org:443",
        "api.github.com:443",
        "[2001:db8::1]:8443",
        "127.0.0.1:8080",
        "a.test",
        "a.test:",
        "a.test:0",
        "a.test:99999",
        "a.test:+443",
        "user@a.test:443",
        "[::1]",
    ]
    .iter()
    .enumerate()
    {
        write("connect_authority", &format!("seed-{i}"), a.as_bytes());
    }

    for (i, h) in [
        "example.com",
        "example.com:8080",
        "http://example.com/path?q=1",
        "[2001:db8::1]:80",
        "user:pw@example.com",
        "EXAMPLE.com.",
        "",
    ]
    .iter()
    .enumerate()
    {
        write("transparent_host", &format!("seed-{i}"), h.as_bytes());
    }

    for (i, c) in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        b"CONNECT a.test:443 HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        b"G",
        b"\x00\x01",
    ]
    .iter()
    .enumerate()
    {
        write("classify", &format!("seed-{i}"), c);
    }

    // Real ClientHellos from rustls; the first byte is the chunk size selector.
    for (i, (name, alpn)) in [
        ("example.com", vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        ("pypi.org", vec![]),
        (
            "a.very.long.subdomain.example.org",
            vec![b"http/1.1".to_vec()],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let hello = client_hello(name, alpn);
        let mut seed = vec![if i == 0 { 255 } else { 3 }];
        seed.extend_from_slice(&hello);
        write("client_hello", &format!("rustls-{name}"), &seed);
    }
    let mut no_sni = vec![255];
    no_sni.extend_from_slice(&client_hello_ip());
    write("client_hello", "rustls-ip-no-sni", &no_sni);
    write("client_hello", "not-tls", b"\x01GET / HTTP/1.1\r\n\r\n");

    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            write("config", &name, &std::fs::read(&path).unwrap());
        }
    }
    write(
        "config",
        "dns.yaml",
        egress_edge::fuzzing::DNS_CONFIG.as_bytes(),
    );
    write("config", "empty.yaml", b"");
    write(
        "config",
        "bad-key.yaml",
        b"proxy: { listen: 127.0.0.1:3128, nope: 1 }\n",
    );

    // A request target; with a newline, a pattern on the first line and a target after it.
    for (i, p) in [
        "/v1/models",
        "/v1/..;/admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/admin?x=/../..",
        "//v1//a/./b/../",
        "/%76%31/%3B",
        "/v1/%252e%252e/admin",
        "/v1/%2Fadmin",
        "/caf%C3%A9/%C0%AE",
        "/v1/..%3Bx/admin#frag",
        "/*/*/git-receive-pack\n/org/repo.git/x/../git-receive-pack",
        "/v1/\n/v1;x/models",
        "/v1\n/v1x",
    ]
    .iter()
    .enumerate()
    {
        write("policy_path", &format!("seed-{i}"), p.as_bytes());
    }

    {
        use hickory_proto::op::{Edns, Message, OpCode, Query};
        use hickory_proto::rr::{DNSClass, Name, RecordType};
        let query = |name: &str, t: RecordType| {
            let mut m = Message::query();
            m.metadata.id = 0x1234;
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
            m
        };
        let mut seeds = vec![
            ("a-upstream", query("upstream.test.", RecordType::A)),
            ("aaaa-six", query("six.test.", RecordType::AAAA)),
            ("a-both", query("both.test.", RecordType::A)),
            ("a-wild", query("api.wild.test.", RecordType::A)),
            ("aaaa-wild", query("x.y.wild.test.", RecordType::AAAA)),
            ("a-private", query("private.test.", RecordType::A)),
            ("a-denied", query("denied.test.", RecordType::A)),
            ("a-unlisted", query("example.com.", RecordType::A)),
            ("txt", query("upstream.test.", RecordType::TXT)),
            (
                "a-encoded",
                query("aGVsbG8gd29ybGQgdGhpcyBpcyBkYXRh.wild.test.", RecordType::A),
            ),
        ];
        let mut edns = query("public.test.", RecordType::A);
        let mut e = Edns::new();
        e.set_max_payload(1232);
        edns.set_edns(e);
        seeds.push(("a-edns", edns));
        let mut chaos = query("version.bind.", RecordType::TXT);
        let q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        let mut q = q;
        q.set_query_class(DNSClass::CH);
        chaos.queries = vec![q];
        seeds.push(("chaos", chaos));
        let mut status = query("upstream.test.", RecordType::A);
        status.metadata.op_code = OpCode::Status;
        seeds.push(("opcode-status", status));
        let mut two = query("upstream.test.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("six.test.").unwrap(),
            RecordType::AAAA,
        ));
        seeds.push(("two-questions", two));
        for (name, m) in seeds {
            write("dns", name, &m.to_vec().unwrap());
        }
        write(
            "dns",
            "header-only",
            &[0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let authority = HandleAuthority::open(dir.path(), Duration::from_secs(3600)).unwrap();
    let mut full = MintRequest::new(["github", "openai"], Duration::from_secs(600));
    full.session = Some("sess-1".to_owned());
    full.host = Some("*.github.com".to_owned());
    full.methods = Some(vec!["GET".to_owned(), "POST".to_owned()]);
    full.path_prefixes = Some(vec!["/repos/".to_owned()]);
    let minted = [
        authority
            .mint(&MintRequest::new(["github"], Duration::from_secs(60)))
            .unwrap()
            .handle,
        authority.mint(&full).unwrap().handle,
    ];
    for (i, h) in minted.iter().enumerate() {
        write("handle_token", &format!("valid-{i}"), h.as_bytes());
        let payload = h.strip_prefix("eeh_").unwrap().split('.').next().unwrap();
        let payload = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap()
        };
        let mut raw = b"!".to_vec();
        raw.extend_from_slice(&payload);
        write("handle_token", &format!("payload-{i}"), &raw);
        let mut tampered = h.clone().into_bytes();
        let mid = tampered.len() / 2;
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        write("handle_token", &format!("tampered-{i}"), &tampered);
    }
    write("handle_token", "short", b"eeh_AAAA.BBBB");
    write("handle_token", "no-prefix", b"ghp_0123456789abcdef");

    let h = &minted[0];
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{h}"))
    };
    let pct: String = h.bytes().map(|b| format!("%{b:02X}")).collect();
    for (i, req) in [
        format!("GET /repos HTTP/1.1\r\nHost: api.github.com\r\nAuthorization: Bearer {h}\r\n\r\n"),
        format!("GET /?token={pct} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        format!("POST / HTTP/1.1\r\nAuthorization: Basic {basic}\r\n\r\n"),
        format!("X-Key: {}\r\n", h.to_uppercase()),
        "X-Key: eeh_short_and_broken\r\nX-Other: EEH%5fx\r\n".to_owned(),
        format!("{h}{h}"),
    ]
    .iter()
    .enumerate()
    {
        write("handle_detect", &format!("seed-{i}"), req.as_bytes());
    }

    for (i, s) in egress_sds::fuzzing::seeds().iter().enumerate() {
        write("sds_responses", &format!("seed-{i}"), s);
    }
}

fn rustls_client(alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

fn first_flight(server: rustls::pki_types::ServerName<'static>, alpn: Vec<Vec<u8>>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(rustls_client(alpn), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn client_hello(name: &str, alpn: Vec<Vec<u8>>) -> Vec<u8> {
    first_flight(name.to_owned().try_into().unwrap(), alpn)
}

fn client_hello_ip() -> Vec<u8> {
    first_flight("192.0.2.1".try_into().unwrap(), Vec::new())
}
