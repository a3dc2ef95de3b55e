//! Our server and our client over loopback TCP: delivery, rotation under concurrent reads,
//! restart with last-good values kept, unknown names, FetchSecrets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use egress_sds::client::spawn_client;
use egress_sds::proto::{DiscoveryRequest, SECRET_TYPE_URL, SecretDiscoveryServiceClient};
use egress_sds::{Secret, SecretStore};

use crate::common::{client_opts, eventually, generic_value, start_server, write_atomic};

const WAIT: Duration = Duration::from_secs(10);

fn secrets_yaml(n: u32) -> String {
    format!(
        "secrets:\n  api-key: {{ value: \"sk-{n}\" }}\n  \
         pair: {{ values: {{ id: \"id-{n}\", secret: \"secret-{n}\" }} }}\n"
    )
}

/// Reads `pair` as the proxy would; returns the generation suffix if the two halves agree.
fn pair_generation(store: &SecretStore) -> Result<u32, String> {
    let v = store.get("pair").ok_or("pair missing")?;
    let Secret::Generic { values, .. } = &*v.secret else {
        return Err("pair is not generic".into());
    };
    let id = values["id"].expose_str().unwrap().trim_start_matches("id-");
    let secret = values["secret"]
        .expose_str()
        .unwrap()
        .trim_start_matches("secret-");
    if id != secret {
        return Err(format!("mixed pair: id {id} secret {secret}"));
    }
    let key = generic_value(store, "api-key").ok_or("api-key missing")?;
    if key.is_empty() {
        return Err("api-key empty".into());
    }
    Ok(id.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_and_rotates_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, &secrets_yaml(1));
    let server = start_server(&file, "127.0.0.1:0", None).await;

    let store = SecretStore::new(["api-key".to_string(), "pair".to_string()]);
    let client = spawn_client(
        client_opts(&format!("http://{}", server.addr), &["api-key", "pair"]),
        store.clone(),
    )
    .unwrap();
    store.wait("api-key", WAIT).await.unwrap();
    eventually("warm", WAIT, || store.is_warm()).await;
    assert_eq!(generic_value(&store, "api-key").as_deref(), Some("sk-1"));
    assert_eq!(pair_generation(&store), Ok(1));
    assert!(store.stats().source.connected);

    // A reader hammering the hot path while the file rotates must never see a gap or a mix.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, stop, reads) = (store.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let generation = pair_generation(&store)?;
                if generation < last {
                    return Err(format!("went back from {last} to {generation}"));
                }
                last = generation;
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            Ok::<_, String>(last)
        })
    };
    for n in 2..=4 {
        let before = store.get("api-key").unwrap().version;
        write_atomic(&file, &secrets_yaml(n));
        let want = format!("sk-{n}");
        eventually("rotation reaches the client", WAIT, || {
            generic_value(&store, "api-key").as_deref() == Some(want.as_str())
        })
        .await;
        assert_ne!(store.get("api-key").unwrap().version, before);
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(reader.await.unwrap(), Ok(4));
    assert!(reads.load(Ordering::Relaxed) > 100);
    let stats = store.stats();
    assert!(stats.source.acks >= 4, "{stats:?}");
    assert_eq!(stats.source.nacks, 0);

    // An invalid edit is refused by the server; clients keep the last good values.
    write_atomic(&file, "secrets:\n  api-key: { file: ./does-not-exist }\n");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(generic_value(&store, "api-key").as_deref(), Some("sk-4"));

    client.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_last_good_and_resubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, &secrets_yaml(1));
    let server = start_server(&file, "127.0.0.1:0", None).await;
    let addr = server.addr;
    let store = SecretStore::new(["api-key".to_string()]);
    let client = spawn_client(
        client_opts(&format!("http://{addr}"), &["api-key"]),
        store.clone(),
    )
    .unwrap();
    store.wait("api-key", WAIT).await.unwrap();

    // Kill the server abruptly (abort, not graceful).
    server.handle.abort();
    eventually("client notices the server is gone", WAIT, || {
        !store.stats().source.connected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        generic_value(&store, "api-key").as_deref(),
        Some("sk-1"),
        "last good value kept while the server is down"
    );

    write_atomic(&file, &secrets_yaml(2));
    let server = start_server(&file, &addr.to_string(), None).await;
    eventually(
        "client resubscribes and sees the later change",
        WAIT,
        || generic_value(&store, "api-key").as_deref() == Some("sk-2"),
    )
    .await;
    let stats = store.stats();
    assert!(stats.source.reconnects >= 1, "{stats:?}");
    assert!(stats.source.connected);

    write_atomic(&file, &secrets_yaml(3));
    eventually("changes after the restart still arrive", WAIT, || {
        generic_value(&store, "api-key").as_deref() == Some("sk-3")
    })
    .await;
    client.abort();
    server.stop().await;
}

#[tokio::test]
async fn unknown_name_stays_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, &secrets_yaml(1));
    let server = start_server(&file, "127.0.0.1:0", None).await;
    let store = SecretStore::new(["api-key".to_string(), "nope".to_string()]);
    let client = spawn_client(
        client_opts(&format!("http://{}", server.addr), &["api-key", "nope"]),
        store.clone(),
    )
    .unwrap();
    store.wait("api-key", WAIT).await.unwrap();
    let started = std::time::Instant::now();
    let err = store
        .wait("nope", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(err.name, "nope");
    assert!(!store.is_warm());
    assert!(store.warm_or_timed_out(Duration::ZERO));
    assert_eq!(store.stats().source.nacks, 0);
    client.abort();
    server.stop().await;
}

#[tokio::test]
async fn fetch_secrets_unary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    write_atomic(&file, &secrets_yaml(7));
    let server = start_server(&file, "127.0.0.1:0", None).await;
    let mut grpc = SecretDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let resp = grpc
        .fetch_secrets(DiscoveryRequest {
            type_url: SECRET_TYPE_URL.into(),
            resource_names: vec!["api-key".into(), "unknown".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.type_url, SECRET_TYPE_URL);
    assert!(!resp.version_info.is_empty());
    assert_eq!(resp.resources.len(), 1);
    let (name, secret) = Secret::from_any(&resp.resources[0]).unwrap();
    assert_eq!(name, "api-key");
    assert_eq!(secret, Secret::generic("sk-7".to_string()));

    let status = grpc
        .fetch_secrets(DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}
