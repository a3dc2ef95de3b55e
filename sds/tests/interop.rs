//! Interoperability with code generated from Envoy's published protos by someone else: the
//! PyPI packages `xds-protos` and `grpcio`, installed once into a venv under the target dir
//! (`support/python.rs`, shared with the edge's fleet interop test).
//! (a) a Python client fetches and streams from our server; (b) our client consumes a Python
//! SDS server, including a rotation and a NACK.
//!
//! Without `python3` the tests skip with a message; a failing `pip install` fails them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/python.rs"]
mod python;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use egress_sds::client::{ClientOptions, Target, spawn_client};
use egress_sds::server::{Listen, ServeOptions, Server};
use egress_sds::{Secret, SecretStore};
use python::{LINE_TIMEOUT, Lines, venv_python};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

fn secrets_yaml(n: u32, dir: &Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["svid.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("svid.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("svid-key.pem"), key.serialize_pem()).unwrap();
    format!(
        "secrets:\n  api-key: {{ value: \"sk-interop-{n}\" }}\n  \
         pair: {{ values: {{ client_id: \"cid\", client_secret: \"cs-{n}\" }} }}\n  \
         svid: {{ certificate: svid.pem, private_key: svid-key.pem }}\n"
    )
}

fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn python_client_against_our_server() {
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, &secrets_yaml(1, dir.path()));
    let server = Server::bind(&ServeOptions {
        listen: Listen::parse("127.0.0.1:0").unwrap(),
        secrets_file: file.clone(),
        tls: None,
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    let mut child = Command::new(&python)
        .arg(script("sds_client.py"))
        .args(["--target", &addr.to_string()])
        .args(["--names", "api-key,pair,svid,not-there"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = Lines::spawn(&mut child);

    let fetch = lines.next_json().await;
    assert_eq!(fetch["event"], "fetch");
    let secrets = &fetch["secrets"];
    assert_eq!(secrets["api-key"]["kind"], "generic_secret");
    assert_eq!(secrets["api-key"]["value"], "sk-interop-1");
    assert_eq!(secrets["pair"]["values"]["client_secret"], "cs-1");
    assert_eq!(secrets["svid"]["kind"], "tls_certificate");
    assert_eq!(secrets["svid"]["chain_head"], "-----BEGIN CERTIFICATE-----");
    assert!(secrets.get("not-there").is_none());

    let first = lines.next_json().await;
    assert_eq!(first["event"], "stream");
    assert_eq!(first["secrets"]["api-key"]["value"], "sk-interop-1");
    assert_eq!(
        first["type_url"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    );

    write_atomic(&file, &secrets_yaml(2, dir.path()));
    let pushed = lines.next_json().await;
    assert_eq!(pushed["event"], "stream");
    assert_eq!(pushed["secrets"]["api-key"]["value"], "sk-interop-2");
    assert_eq!(pushed["secrets"]["pair"]["values"]["client_secret"], "cs-2");
    assert_ne!(pushed["version"], first["version"]);
    assert_ne!(pushed["nonce"], first["nonce"]);

    let status = tokio::time::timeout(LINE_TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "python client exited with {status}");
    let _ = stop_tx.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn our_client_against_python_server() {
    let Some(python) = venv_python() else { return };
    let mut child = Command::new(&python)
        .arg(script("sds_server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = Lines::spawn(&mut child);
    let port_line = lines.next().await;
    let port = port_line
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("unexpected first line: {port_line}"));

    let store = SecretStore::new(["py-key".to_string(), "py-pair".to_string()]);
    let client = spawn_client(
        ClientOptions {
            target: Target::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            tls: None,
            node_id: "edge-interop".into(),
            cluster: String::new(),
            names: vec!["py-key".into(), "py-pair".into(), "py-missing".into()],
            initial_fetch_timeout: Duration::from_secs(5),
        },
        store.clone(),
    )
    .unwrap();

    let first = lines
        .until("initial request", |v| v["event"] == "request")
        .await;
    assert_eq!(first["node"], "edge-interop");
    assert_eq!(first["cluster"], "egress-edge");
    assert_eq!(
        first["names"],
        serde_json::json!(["py-key", "py-pair", "py-missing"])
    );
    let ack = lines
        .until("ACK of the first response", |v| v["nonce"] != "")
        .await;
    assert_eq!(ack["version_info"], "py-1");
    assert!(ack["error"].is_null());
    let key = store.get("py-key").unwrap();
    assert_eq!(key.version, "py-1");
    assert_eq!(*key.secret, Secret::generic("py-v1".to_string()));
    match &*store.get("py-pair").unwrap().secret {
        Secret::Generic { values, .. } => {
            assert_eq!(values["client_id"].expose(), b"py-client-id");
            assert_eq!(values["client_secret"].expose(), b"py-client-secret");
        }
        other => panic!("{other:?}"),
    }
    assert!(store.get("py-missing").is_none());

    stdin.write_all(b"rotate py-v2\n").await.unwrap();
    let ack = lines
        .until("ACK of the rotation", |v| v["version_info"] == "py-2")
        .await;
    assert!(ack["error"].is_null());
    assert_eq!(
        *store.get("py-key").unwrap().secret,
        Secret::generic("py-v2".to_string())
    );

    stdin.write_all(b"bad\n").await.unwrap();
    let nack = lines.until("NACK", |v| !v["error"].is_null()).await;
    assert_eq!(
        nack["version_info"], "py-2",
        "NACK keeps the last accepted version"
    );
    let error = nack["error"].as_str().unwrap();
    assert!(error.contains("py-key"), "{error}");
    assert!(!error.contains("py-v2"));
    assert_eq!(
        *store.get("py-key").unwrap().secret,
        Secret::generic("py-v2".to_string()),
        "last good value kept after the NACK"
    );
    assert_eq!(store.stats().source.nacks, 1);

    client.abort();
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
