//! TLS and mTLS between our client and server, and refusals that happen before connecting.

use std::time::Duration;

use egress_sds::SecretStore;
use egress_sds::client::{ClientTls, Target, spawn_client};
use egress_sds::server::ServerTls;

use crate::common::{client_opts, eventually, generic_value, pki, start_server, write_atomic};

#[tokio::test]
async fn mtls_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, "secrets:\n  k: { value: \"sk-mtls\" }\n");
    let tls = ServerTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    };
    let server = start_server(&file, "127.0.0.1:0", Some(tls)).await;
    let target = format!("https://localhost:{}", server.addr.port());

    let mut opts = client_opts(&target, &["k"]);
    opts.tls = Some(ClientTls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    });
    let store = SecretStore::new(["k".to_string()]);
    let with_cert = spawn_client(opts.clone(), store.clone()).unwrap();
    store.wait("k", Duration::from_secs(10)).await.unwrap();
    assert_eq!(generic_value(&store, "k").as_deref(), Some("sk-mtls"));

    // Same CA, no client certificate: the server refuses it.
    let mut no_cert = opts.clone();
    no_cert.tls = Some(ClientTls {
        ca: Some(pki.ca.clone()),
        cert: None,
        key: None,
    });
    let refused = SecretStore::new(["k".to_string()]);
    let without_cert = spawn_client(no_cert, refused.clone()).unwrap();
    eventually(
        "the refused client records an error",
        Duration::from_secs(10),
        || refused.stats().source.last_error.is_some(),
    )
    .await;
    assert!(refused.wait("k", Duration::from_millis(500)).await.is_err());

    // A client that does not trust the server's CA fails too (system roots only).
    let mut untrusting = opts.clone();
    untrusting.tls = Some(ClientTls {
        ca: Some(dir.path().join("server.pem")),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    });
    let untrusted = SecretStore::new(["k".to_string()]);
    let untrusting = spawn_client(untrusting, untrusted.clone()).unwrap();
    assert!(
        untrusted
            .wait("k", Duration::from_millis(800))
            .await
            .is_err()
    );

    with_cert.abort();
    without_cert.abort();
    untrusting.abort();
    server.stop().await;
}

#[tokio::test]
async fn partial_or_unsafe_settings_are_refused_before_connecting() {
    let mut opts = client_opts("https://sds.example:8443", &["k"]);
    opts.tls = Some(ClientTls {
        ca: None,
        cert: Some("c.pem".into()),
        key: None,
    });
    let e = opts.validate().unwrap_err().to_string();
    assert!(e.contains("tls.cert is set without tls.key"), "{e}");
    assert!(spawn_client(opts.clone(), SecretStore::new([])).is_err());
    opts.tls = Some(ClientTls {
        ca: None,
        cert: None,
        key: Some("k.pem".into()),
    });
    assert!(opts.validate().is_err());

    let mut plain = client_opts("http://127.0.0.1:1", &["k"]);
    plain.tls = Some(ClientTls::default());
    assert!(
        plain.validate().is_err(),
        "TLS settings with http:// are refused"
    );
    plain.tls = None;
    plain.node_id = String::new();
    assert!(plain.validate().is_err(), "empty node id");

    for bad in [
        "http://10.0.0.1:18000",
        "http://sds.corp:18000",
        "http://192.168.1.1:80",
        "ftp://127.0.0.1:1",
        "127.0.0.1:18000",
        "unix://relative/path",
        "https://user:pw@sds.corp:8443",
        "https://sds.corp:8443/path",
    ] {
        assert!(Target::parse(bad).is_err(), "{bad} should be refused");
    }
    assert_eq!(
        Target::parse("http://127.0.0.1:18000").unwrap(),
        Target::Http {
            host: "127.0.0.1".into(),
            port: 18000
        }
    );
    assert!(Target::parse("http://localhost:18000").is_ok());
    assert!(Target::parse("http://[::1]:18000").is_ok());
    assert_eq!(
        Target::parse("https://sds.corp:8443").unwrap(),
        Target::Https {
            host: "sds.corp".into(),
            port: 8443
        }
    );
    assert_eq!(
        Target::parse("unix:///run/spire/agent.sock").unwrap(),
        Target::Unix("/run/spire/agent.sock".into())
    );

    assert!(ServerTls::from_parts(Some("c".into()), None, None).is_err());
    assert!(ServerTls::from_parts(None, Some("k".into()), None).is_err());
    assert!(ServerTls::from_parts(None, None, Some("ca".into())).is_err());
    assert!(ServerTls::from_parts(None, None, None).unwrap().is_none());
}
