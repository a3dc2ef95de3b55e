//! [`SecretStore`]: the in-memory set of current secrets that the proxy reads on every request,
//! plus per-secret and per-source status for readiness and metrics.
//!
//! Reads are lock-free (an `ArcSwap` of an immutable snapshot, swapped wholesale), so a reader
//! sees either the whole old set or the whole new one, never a mix. The store does not fetch
//! anything itself; sources (`file_source`, `client`) write into it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::error::Unavailable;
use crate::secret::{Secret, Versioned};

/// An immutable view of all secrets at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Version of the last accepted update of the whole set (file version or SDS version_info).
    pub version: String,
    pub secrets: HashMap<String, Versioned>,
}

/// Counters of the source feeding the store (an SDS stream or a watched file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub connected: bool,
    pub reconnects: u64,
    pub acks: u64,
    pub nacks: u64,
    /// Last error, worded without any secret value; cleared by the next good update.
    pub last_error: Option<String>,
}

/// Status of one secret name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretStatus {
    pub name: String,
    pub referenced: bool,
    pub version: Option<String>,
    pub updated_at: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// Everything [`SecretStore::stats`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub version: String,
    pub warm: bool,
    pub secrets: Vec<SecretStatus>,
    pub source: SourceStats,
}

#[derive(Default)]
struct Status {
    errors: HashMap<String, String>,
    source: SourceStats,
}

struct Inner {
    snapshot: ArcSwap<Snapshot>,
    referenced: BTreeSet<String>,
    status: Mutex<Status>,
    generation: watch::Sender<u64>,
    created: Instant,
}

/// Shared handle to the secrets; cheap to clone.
#[derive(Clone)]
pub struct SecretStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.inner.snapshot.load();
        f.debug_struct("SecretStore")
            .field("version", &snap.version)
            .field("names", &snap.secrets.keys().collect::<BTreeSet<_>>())
            .field("referenced", &self.inner.referenced)
            .finish()
    }
}

impl SecretStore {
    /// A store that expects `referenced` names (used by readiness; others may be stored too).
    pub fn new(referenced: impl IntoIterator<Item = String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                referenced: referenced.into_iter().collect(),
                status: Mutex::new(Status::default()),
                generation: watch::channel(0).0,
                created: Instant::now(),
            }),
        }
    }

    /// The current value of `name`; lock-free.
    pub fn get(&self, name: &str) -> Option<Versioned> {
        self.inner.snapshot.load().secrets.get(name).cloned()
    }

    /// The whole current set, consistent with itself.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    pub fn referenced(&self) -> &BTreeSet<String> {
        &self.inner.referenced
    }

    /// Waits until `name` is present, at most `timeout`.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Result<Versioned, Unavailable> {
        // Subscribe before the first look so that an update between the two is not missed.
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.get(name) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // A closed channel cannot happen while `self` holds the sender; time out anyway.
                Ok(Err(_)) | Err(_) => {
                    return self.get(name).ok_or_else(|| Unavailable {
                        name: name.to_string(),
                        waited: timeout,
                    });
                }
            }
        }
    }

    /// Replaces the whole set at once (the file source). Secrets whose content did not change
    /// keep their version and `updated_at`; names absent from `secrets` disappear.
    pub fn replace_all(&self, secrets: BTreeMap<String, Secret>, version: impl Into<String>) {
        let version = version.into();
        let old = self.inner.snapshot.load_full();
        let mut changed = old.secrets.len() != secrets.len() || old.version != version;
        let mut next = HashMap::with_capacity(secrets.len());
        for (name, secret) in secrets {
            let entry = match old.secrets.get(&name) {
                Some(prev) if *prev.secret == secret => prev.clone(),
                _ => {
                    changed = true;
                    Versioned::new(secret, version.clone())
                }
            };
            next.insert(name, entry);
        }
        if changed {
            self.inner.snapshot.store(Arc::new(Snapshot {
                version,
                secrets: next,
            }));
            self.bump();
        }
        let mut status = self.status();
        status.errors.clear();
        status.source.last_error = None;
    }

    /// Sets one secret, keeping the others.
    pub fn update(&self, name: impl Into<String>, versioned: Versioned) {
        let name = name.into();
        let version = versioned.version.clone();
        self.inner.snapshot.rcu(|old| {
            let mut next = Snapshot::clone(old);
            next.version = version.clone();
            next.secrets.insert(name.clone(), versioned.clone());
            next
        });
        self.status().errors.remove(&name);
        self.bump();
    }

    /// Sets several secrets delivered together under `version`, atomically; names not listed
    /// keep their last value (SDS never deletes by omission). Unchanged contents keep their
    /// earlier version and `updated_at`.
    pub fn update_many(&self, secrets: Vec<(String, Secret)>, version: &str) {
        let mut changed = false;
        self.inner.snapshot.rcu(|old| {
            changed = old.version != version;
            let mut next = Snapshot::clone(old);
            next.version = version.to_string();
            for (name, secret) in &secrets {
                match old.secrets.get(name) {
                    Some(prev) if *prev.secret == *secret => {}
                    _ => {
                        changed = true;
                        next.secrets
                            .insert(name.clone(), Versioned::new(secret.clone(), version));
                    }
                }
            }
            next
        });
        {
            let mut status = self.status();
            for (name, _) in &secrets {
                status.errors.remove(name);
            }
        }
        if changed {
            self.bump();
        }
    }

    /// All referenced names have a value.
    pub fn is_warm(&self) -> bool {
        let snap = self.inner.snapshot.load();
        self.inner
            .referenced
            .iter()
            .all(|n| snap.secrets.contains_key(n))
    }

    /// Readiness: warm, or `initial_fetch_timeout` has passed since the store was created
    /// (from then on, requests needing a missing secret get `credential_unavailable`).
    pub fn warm_or_timed_out(&self, initial_fetch_timeout: Duration) -> bool {
        self.is_warm() || self.inner.created.elapsed() >= initial_fetch_timeout
    }

    /// A generation counter that increases on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    pub fn stats(&self) -> StoreStats {
        let snap = self.inner.snapshot.load();
        let status = self.status();
        let mut names: BTreeSet<&String> = snap.secrets.keys().collect();
        names.extend(self.inner.referenced.iter());
        names.extend(status.errors.keys());
        let secrets = names
            .into_iter()
            .map(|name| {
                let v = snap.secrets.get(name);
                SecretStatus {
                    name: name.clone(),
                    referenced: self.inner.referenced.contains(name),
                    version: v.map(|v| v.version.clone()),
                    updated_at: v.map(|v| v.updated_at),
                    last_error: status.errors.get(name).cloned(),
                }
            })
            .collect();
        StoreStats {
            version: snap.version.clone(),
            warm: self
                .inner
                .referenced
                .iter()
                .all(|n| snap.secrets.contains_key(n)),
            secrets,
            source: status.source.clone(),
        }
    }

    pub(crate) fn record_connected(&self, connected: bool) {
        self.status().source.connected = connected;
    }

    pub(crate) fn record_reconnect(&self) {
        self.status().source.reconnects += 1;
    }

    pub(crate) fn record_ack(&self) {
        let mut status = self.status();
        status.source.acks += 1;
        status.source.last_error = None;
    }

    /// A rejected update; `name` is the secret at fault when there is one.
    pub(crate) fn record_nack(&self, name: Option<&str>, error: &str) {
        let mut status = self.status();
        status.source.nacks += 1;
        status.source.last_error = Some(error.to_string());
        if let Some(name) = name {
            status.errors.insert(name.to_string(), error.to_string());
        }
    }

    pub(crate) fn record_error(&self, error: &str) {
        self.status().source.last_error = Some(error.to_string());
    }

    fn bump(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }

    // Status is plain bookkeeping: a panic elsewhere cannot leave it inconsistent, so a
    // poisoned lock is simply taken over.
    fn status(&self) -> MutexGuard<'_, Status> {
        self.inner
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_times_out_then_sees_update() {
        let store = SecretStore::new(["a".to_string()]);
        let err = store
            .wait("a", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.name, "a");
        assert!(!store.is_warm());
        let s2 = store.clone();
        let waiter = tokio::spawn(async move { s2.wait("a", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.update("a", Versioned::new(Secret::generic("x".to_string()), "1"));
        assert_eq!(waiter.await.unwrap().unwrap().version, "1");
        assert!(store.is_warm());
    }

    #[test]
    fn replace_all_keeps_unchanged_versions() {
        let store = SecretStore::new([]);
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Secret::generic("1".to_string()));
        m.insert("b".to_string(), Secret::generic("2".to_string()));
        store.replace_all(m.clone(), "v1");
        m.insert("b".to_string(), Secret::generic("3".to_string()));
        store.replace_all(m, "v2");
        assert_eq!(store.get("a").unwrap().version, "v1");
        assert_eq!(store.get("b").unwrap().version, "v2");
        assert_eq!(store.snapshot().version, "v2");
    }

    #[test]
    fn warm_or_timed_out() {
        let store = SecretStore::new(["a".to_string()]);
        assert!(!store.warm_or_timed_out(Duration::from_secs(60)));
        assert!(store.warm_or_timed_out(Duration::ZERO));
    }
}
