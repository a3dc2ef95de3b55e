//! The fleet stream end to end over a real socket: our ADS server (`Server::with_fleet`)
//! serving a `Published`, our ADS client feeding a recording sink. Every type arrives on
//! subscription; a change is pushed; a rejected set is NACKed and a later good one accepted;
//! grants with a TTL are kept alive by the heartbeat and lapse when the server is gone, while
//! restrictions stay; a restarted server is resubscribed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_sds::SecretStore;
use egress_sds::client::{FleetOptions, FleetSink, Target, Why, spawn_fleet_client};
use egress_sds::fleet::{FleetType, Item, Published};
use egress_sds::server::Server;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Default)]
struct Recorder {
    /// Last accepted (version, names) per type, and every call.
    held: Mutex<BTreeMap<FleetType, (String, Vec<String>)>>,
    calls: Mutex<Vec<(FleetType, String, usize, Why)>>,
    /// Sets containing this name are refused.
    refuse: Mutex<Option<String>>,
    up: Mutex<bool>,
}

impl FleetSink for Recorder {
    fn apply(&self, ty: FleetType, version: &str, items: &[Item], why: Why) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push((ty, version.to_owned(), items.len(), why));
        // Resources without a TTL travel unwrapped, so their names are in their (here: textual)
        // values.
        let names: Vec<String> = items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.value).into_owned())
            .collect();
        if let Some(bad) = self.refuse.lock().unwrap().as_ref()
            && names.contains(bad)
        {
            return Err(format!("{bad} is refused"));
        }
        self.held
            .lock()
            .unwrap()
            .insert(ty, (version.to_owned(), names));
        Ok(())
    }

    fn stream(&self, down: Option<&str>) {
        *self.up.lock().unwrap() = down.is_none();
    }
}

impl Recorder {
    fn names(&self, ty: FleetType) -> Option<Vec<String>> {
        self.held.lock().unwrap().get(&ty).map(|(_, n)| n.clone())
    }
}

fn item(name: &str, ttl: Option<Duration>) -> Item {
    Item {
        name: name.to_owned(),
        value: name.as_bytes().to_vec(),
        ttl,
    }
}

async fn until(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), egress_sds::SdsError>>,
}

async fn serve(listener: TcpListener, published: Published) -> Running {
    let server = Server::with_store(listener, SecretStore::new([]), None)
        .unwrap()
        .with_fleet(published, Duration::from_millis(200));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[tokio::test]
async fn fleet_types_are_pushed_nacked_kept_alive_lapsed_and_resubscribed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let published = Published::new();
    let ttl = Some(Duration::from_millis(800));
    published.set(FleetType::Revocation, vec![item("id/1", None)]);
    published.set(FleetType::Sandbox, vec![item("sbx-1", ttl)]);
    let server = serve(listener, published.clone()).await;

    let sink = Arc::new(Recorder::default());
    let client = spawn_fleet_client(
        FleetOptions {
            target: Target::Http {
                host: "127.0.0.1".into(),
                port: addr.port(),
            },
            tls: None,
            node_id: "edge-t".into(),
            cluster: String::new(),
        },
        sink.clone(),
    )
    .unwrap();

    // Every type arrives, empty ones included.
    until(Duration::from_secs(5), "all four types", || {
        sink.held.lock().unwrap().len() == 4
    })
    .await;
    assert!(*sink.up.lock().unwrap());
    assert_eq!(sink.names(FleetType::Revocation).unwrap(), ["id/1"]);
    assert_eq!(
        sink.names(FleetType::KillSwitch).unwrap(),
        Vec::<String>::new()
    );

    // A change is pushed.
    published.set(
        FleetType::Revocation,
        vec![item("id/1", None), item("id/2", None)],
    );
    until(Duration::from_secs(2), "pushed", || {
        sink.names(FleetType::Revocation)
            .is_some_and(|n| n.len() == 2)
    })
    .await;

    // A refused set leaves the previous one; the next good one is taken.
    *sink.refuse.lock().unwrap() = Some("bad".into());
    let bad_version = published.set(FleetType::Revocation, vec![item("bad", None)]);
    until(Duration::from_secs(2), "offered", || {
        sink.calls
            .lock()
            .unwrap()
            .iter()
            .any(|(_, v, _, _)| *v == bad_version)
    })
    .await;
    assert_eq!(sink.names(FleetType::Revocation).unwrap(), ["id/1", "id/2"]);
    published.set(FleetType::Revocation, vec![item("id/3", None)]);
    until(Duration::from_secs(2), "good one after a NACK", || {
        sink.names(FleetType::Revocation) == Some(vec!["id/3".into()])
    })
    .await;

    // The heartbeat keeps the grant past its TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.names(FleetType::Sandbox).unwrap(), ["sbx-1"]);
    assert!(
        !sink.calls.lock().unwrap().iter().any(|c| c.3 == Why::Lapse),
        "nothing lapsed while connected"
    );

    // A refused update of the grants keeps the previous ones in force, and alive: the server
    // is there and still names them.
    *sink.refuse.lock().unwrap() = Some("sbx-bad".into());
    published.set(
        FleetType::Sandbox,
        vec![item("sbx-1", ttl), item("sbx-bad", ttl)],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.names(FleetType::Sandbox).unwrap(), ["sbx-1"]);
    assert!(
        !sink.calls.lock().unwrap().iter().any(|c| c.3 == Why::Lapse),
        "a refused update does not let the held grants lapse while connected"
    );
    *sink.refuse.lock().unwrap() = None;
    published.set(FleetType::Sandbox, vec![item("sbx-1", ttl)]);

    // Server gone: the grant lapses within its TTL (plus the check period), restrictions stay.
    server.stop().await;
    let gone = Instant::now();
    until(Duration::from_secs(3), "grant lapsed", || {
        sink.names(FleetType::Sandbox) == Some(Vec::new())
    })
    .await;
    assert!(
        gone.elapsed() < Duration::from_millis(800 + 500),
        "{:?}",
        gone.elapsed()
    );
    assert!(!*sink.up.lock().unwrap());
    assert_eq!(sink.names(FleetType::Revocation).unwrap(), ["id/3"]);

    // A server back on the same address is resubscribed and the grant returns.
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = serve(listener, published.clone()).await;
    until(Duration::from_secs(10), "resubscribed", || {
        sink.names(FleetType::Sandbox) == Some(vec!["sbx-1".into()])
    })
    .await;
    server.stop().await;
    client.abort();
}
