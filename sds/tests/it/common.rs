//! Shared test helpers: test PKI, atomic file writes, polling, running a server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_sds::SdsError;
use egress_sds::client::{ClientOptions, Target};
use egress_sds::server::{Listen, ServeOptions, Server, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// PEM files of a throwaway CA, a server leaf (localhost, 127.0.0.1) and a client leaf.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "egress-sds test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, eku: ExtendedKeyUsagePurpose, stem: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    let (client_cert, client_key) = leaf(
        vec!["edge-1.test".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Pki {
        ca: ca_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// A self-signed certificate and its key, as PEM strings.
pub fn self_signed_pem(name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes via rename, as Kubernetes and editors do, so a poll never sees half a file.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `cond` every 20ms until it holds; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server running in a task.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), SdsError>>,
}

impl Running {
    /// Graceful stop: open streams end with UNAVAILABLE.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

pub async fn start_server(secrets: &Path, listen: &str, tls: Option<ServerTls>) -> Running {
    let opts = ServeOptions {
        listen: Listen::parse(listen).unwrap(),
        secrets_file: secrets.to_path_buf(),
        tls,
    };
    let server = Server::bind(&opts).await.unwrap();
    let addr = server
        .local_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        shutdown: Some(tx),
        handle,
    }
}

pub fn client_opts(target: &str, names: &[&str]) -> ClientOptions {
    ClientOptions {
        target: Target::parse(target).unwrap(),
        tls: None,
        node_id: "edge-test".into(),
        cluster: String::new(),
        names: names.iter().map(|s| s.to_string()).collect(),
        initial_fetch_timeout: Duration::from_secs(5),
    }
}

pub fn generic_value(store: &egress_sds::SecretStore, name: &str) -> Option<String> {
    match &*store.get(name)?.secret {
        egress_sds::Secret::Generic { value: Some(v), .. } => Some(v.expose_str()?.to_string()),
        _ => None,
    }
}
