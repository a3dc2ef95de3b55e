//! The client against a scripted in-test SDS server: NACK of unusable responses with the old
//! nonce and version, last good values kept, and no request storm for missing names.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_sds::client::spawn_client;
use egress_sds::proto::envoy::config::core::v3::{DataSource, data_source::Specifier};
use egress_sds::proto::{
    Any, DiscoveryRequest, DiscoveryResponse, SECRET_TYPE_URL, SecretDiscoveryService,
    SecretDiscoveryServiceServer, tls,
};
use egress_sds::{Secret, SecretBytes, SecretStore};
use prost::Message;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{BroadcastStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::common::{client_opts, eventually, generic_value, self_signed_pem};

const WAIT: Duration = Duration::from_secs(10);

/// Records every request; sends whatever the test pushes.
#[derive(Clone)]
struct Scripted {
    requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
    push: broadcast::Sender<DiscoveryResponse>,
}

type RespStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Scripted {
    type StreamSecretsStream = RespStream;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut inbound = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                requests.lock().unwrap().push(req);
            }
        });
        let out = BroadcastStream::new(self.push.subscribe())
            .filter_map(|r| r.ok())
            .map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_secrets(
        &self,
        _: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn start_scripted() -> (Scripted, std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = Scripted {
        requests: Arc::default(),
        push: broadcast::channel(16).0,
    };
    let served = svc.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(served))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (svc, addr, task)
}

fn response(version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: SECRET_TYPE_URL.into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn raw_any(secret: tls::Secret) -> Any {
    Any {
        type_url: SECRET_TYPE_URL.into(),
        value: secret.encode_to_vec(),
    }
}

impl Scripted {
    fn requests(&self) -> Vec<DiscoveryRequest> {
        self.requests.lock().unwrap().clone()
    }

    async fn wait_for_reply(&self, nonce: &str) -> DiscoveryRequest {
        let mut found = None;
        eventually(&format!("a request answering nonce {nonce}"), WAIT, || {
            found = self
                .requests()
                .into_iter()
                .find(|r| r.response_nonce == nonce);
            found.is_some()
        })
        .await;
        found.unwrap()
    }
}

#[tokio::test]
async fn nacks_unusable_responses_and_keeps_last_good() {
    let (server, addr, task) = start_scripted().await;
    let store = SecretStore::new(["key".to_string(), "svid".to_string()]);
    let client = spawn_client(
        client_opts(&format!("http://{addr}"), &["key", "svid"]),
        store.clone(),
    )
    .unwrap();
    eventually("initial request", WAIT, || !server.requests().is_empty()).await;
    let first = server.requests()[0].clone();
    assert_eq!(first.type_url, SECRET_TYPE_URL);
    assert_eq!(first.resource_names, vec!["key", "svid"]);
    let node = first.node.unwrap();
    assert_eq!(node.id, "edge-test");
    assert!(!node.cluster.is_empty());
    assert!(first.version_info.is_empty() && first.response_nonce.is_empty());

    let (cert, key) = self_signed_pem("svid.test");
    let good_svid = Secret::TlsCertificate {
        chain_pem: cert.clone(),
        key_pem: SecretBytes::from(key),
    };
    server
        .push
        .send(response(
            "v1",
            "n1",
            vec![
                Secret::generic("sk-good".to_string()).to_any("key"),
                good_svid.to_any("svid"),
            ],
        ))
        .unwrap();
    let ack = server.wait_for_reply("n1").await;
    assert_eq!(ack.version_info, "v1");
    assert!(ack.error_detail.is_none());
    assert_eq!(generic_value(&store, "key").as_deref(), Some("sk-good"));

    // Garbage PEM in a tls_certificate.
    let garbage = tls::Secret {
        name: "svid".into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: Some(DataSource {
                specifier: Some(Specifier::InlineString(
                    "-----BEGIN CERTIFICATE-----\nR0FSQkFHRQ==\n-----END CERTIFICATE-----\n".into(),
                )),
            }),
            private_key: Some(DataSource {
                specifier: Some(Specifier::InlineString("TOP-SECRET-KEY-MATERIAL".into())),
            }),
            password: None,
        })),
    };
    let bad_key_value = Secret::generic("sk-should-not-apply".to_string()).to_any("key");
    server
        .push
        .send(response("v2", "n2", vec![bad_key_value, raw_any(garbage)]))
        .unwrap();
    let nack = server.wait_for_reply("n2").await;
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last accepted version"
    );
    let detail = nack.error_detail.expect("NACK has error_detail");
    assert!(detail.message.contains("svid"), "{}", detail.message);
    assert!(!detail.message.contains("TOP-SECRET"), "{}", detail.message);
    assert_eq!(
        generic_value(&store, "key").as_deref(),
        Some("sk-good"),
        "all-or-nothing: the good half of a rejected response is not applied"
    );
    assert_eq!(*store.get("svid").unwrap().secret, good_svid);
    assert_eq!(store.get("svid").unwrap().version, "v1");

    // More unusable shapes, each NACKed with its own nonce.
    let wrong_type = Any {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        value: vec![],
    };
    let unrequested = Secret::generic("x".to_string()).to_any("someone-else");
    let server_path = raw_any(tls::Secret {
        name: "key".into(),
        r#type: Some(tls::secret::Type::GenericSecret(tls::GenericSecret {
            secret: Some(DataSource {
                specifier: Some(Specifier::Filename("/etc/server-only".into())),
            }),
            secrets: Default::default(),
        })),
    });
    for (i, resource) in [wrong_type, unrequested, server_path]
        .into_iter()
        .enumerate()
    {
        let nonce = format!("bad-{i}");
        server
            .push
            .send(response(&format!("vbad{i}"), &nonce, vec![resource]))
            .unwrap();
        let nack = server.wait_for_reply(&nonce).await;
        assert_eq!(nack.version_info, "v1");
        assert!(nack.error_detail.is_some(), "resource {i} should be NACKed");
    }
    let stats = store.stats();
    assert_eq!(stats.source.nacks, 4, "{stats:?}");
    assert!(stats.source.last_error.is_some());
    assert_eq!(generic_value(&store, "key").as_deref(), Some("sk-good"));

    // A good response after all that is applied and ACKed.
    server
        .push
        .send(response(
            "v3",
            "n3",
            vec![Secret::generic("sk-rotated".to_string()).to_any("key")],
        ))
        .unwrap();
    let ack = server.wait_for_reply("n3").await;
    assert_eq!(ack.version_info, "v3");
    assert!(ack.error_detail.is_none());
    assert_eq!(generic_value(&store, "key").as_deref(), Some("sk-rotated"));
    assert_eq!(
        *store.get("svid").unwrap().secret,
        good_svid,
        "omitted from a response is not deleted"
    );
    client.abort();
    task.abort();
}

#[tokio::test]
async fn missing_name_causes_no_request_storm() {
    let (server, addr, task) = start_scripted().await;
    let store = SecretStore::new(["key".to_string(), "absent".to_string()]);
    let client = spawn_client(
        client_opts(&format!("http://{addr}"), &["key", "absent"]),
        store.clone(),
    )
    .unwrap();
    eventually("initial request", WAIT, || !server.requests().is_empty()).await;
    server
        .push
        .send(response(
            "v1",
            "n1",
            vec![Secret::generic("sk".to_string()).to_any("key")],
        ))
        .unwrap();
    server.wait_for_reply("n1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = server.requests().len();
    assert!(count <= 3, "client sent {count} requests in ~1s");
    assert!(
        store
            .wait("absent", Duration::from_millis(200))
            .await
            .is_err()
    );
    assert!(store.get("key").is_some());
    client.abort();
    task.abort();
}
