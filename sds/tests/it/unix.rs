//! Unix socket transport: server on a socket file, client with `unix:///path`.

use std::time::Duration;

use egress_sds::SecretStore;
use egress_sds::client::spawn_client;

use crate::common::{client_opts, generic_value, start_server, write_atomic};

#[tokio::test]
async fn serves_and_subscribes_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, "secrets:\n  k: { value: \"sk-unix\" }\n");
    let sock = dir.path().join("sds.sock");
    let listen = format!("unix://{}", sock.display());
    let server = start_server(&file, &listen, None).await;
    assert!(sock.exists());

    let store = SecretStore::new(["k".to_string()]);
    let client = spawn_client(client_opts(&listen, &["k"]), store.clone()).unwrap();
    store.wait("k", Duration::from_secs(10)).await.unwrap();
    assert_eq!(generic_value(&store, "k").as_deref(), Some("sk-unix"));
    client.abort();
    server.stop().await;
    assert!(!sock.exists(), "socket file removed on shutdown");
}
