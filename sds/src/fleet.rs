//! Fleet state over the aggregated xDS stream (ADS): the four resource types a control plane
//! shares with every edge (revocations, sandboxes, profiles, the kill switch), their type
//! URLs, the resource as it travels ([`Item`]: name, encoded message, optional TTL), and
//! [`Published`], the per-type sets a server hands to its ADS streams.
//!
//! It does not interpret resources: decoding and validating them against an edge's policy is
//! the proxy's job, and the transport is `client::ads` and `server::ads`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// The resource types of the fleet, in the order edges subscribe to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FleetType {
    Revocation,
    Profile,
    Sandbox,
    KillSwitch,
}

impl FleetType {
    /// Every type, profiles before sandboxes (a sandbox names a profile).
    pub const ALL: [FleetType; 4] = [
        FleetType::Revocation,
        FleetType::Profile,
        FleetType::Sandbox,
        FleetType::KillSwitch,
    ];

    /// The type URL inside `google.protobuf.Any` and on `DiscoveryRequest.type_url`.
    pub fn type_url(self) -> &'static str {
        match self {
            FleetType::Revocation => "type.googleapis.com/egress_edge.fleet.v1.Revocation",
            FleetType::Profile => "type.googleapis.com/egress_edge.fleet.v1.Profile",
            FleetType::Sandbox => "type.googleapis.com/egress_edge.fleet.v1.Sandbox",
            FleetType::KillSwitch => "type.googleapis.com/egress_edge.fleet.v1.KillSwitch",
        }
    }

    /// The short name used in logs, metrics labels, `/readyz` and `/v1/config`.
    pub fn label(self) -> &'static str {
        match self {
            FleetType::Revocation => "revocations",
            FleetType::Profile => "profiles",
            FleetType::Sandbox => "sandboxes",
            FleetType::KillSwitch => "kill_switch",
        }
    }

    pub fn from_type_url(url: &str) -> Option<FleetType> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Grants lapse when their TTL runs out; restrictions (revocations, the kill switch) are
    /// kept by an edge cut off from its control plane, whatever TTL they carry.
    pub fn is_grant(self) -> bool {
        matches!(self, FleetType::Profile | FleetType::Sandbox)
    }
}

impl fmt::Display for FleetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One resource: its xDS name, its encoded message (of the type's message type) and, when
/// served wrapped in `envoy.service.discovery.v3.Resource`, its time to live.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    pub value: Vec<u8>,
    pub ttl: Option<Duration>,
}

// Fleet resources hold no secret (a proxy token travels as its hash), but keep `Debug` short.
impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The published set of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSet {
    /// Derived from the content, so a restarted server publishing the same state announces
    /// the same version.
    pub version: String,
    pub items: Vec<Item>,
}

struct Inner {
    sets: Mutex<BTreeMap<FleetType, Arc<TypeSet>>>,
    changed: watch::Sender<u64>,
}

/// What a control plane publishes: per type, a set of items and its version. ADS streams
/// subscribe to changes. Cheap to clone.
#[derive(Clone)]
pub struct Published {
    inner: Arc<Inner>,
}

impl fmt::Debug for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sets = self
            .inner
            .sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut d = f.debug_struct("Published");
        for (t, s) in sets.iter() {
            d.field(
                t.label(),
                &format_args!("{} ({} items)", s.version, s.items.len()),
            );
        }
        d.finish()
    }
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

impl Published {
    /// Every type published, empty.
    pub fn new() -> Self {
        let sets = FleetType::ALL
            .into_iter()
            .map(|t| (t, Arc::new(make_set(Vec::new()))))
            .collect();
        Published {
            inner: Arc::new(Inner {
                sets: Mutex::new(sets),
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// Replaces the set of `ty` (items are sorted by name); streams are woken only when the
    /// content changed. Returns the version now in force.
    pub fn set(&self, ty: FleetType, items: Vec<Item>) -> String {
        let next = make_set(items);
        let mut sets = self
            .inner
            .sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version = next.version.clone();
        if sets.get(&ty).is_some_and(|s| **s == next) {
            return version;
        }
        sets.insert(ty, Arc::new(next));
        drop(sets);
        self.inner.changed.send_modify(|g| *g += 1);
        version
    }

    /// The set of `ty` now.
    pub fn get(&self, ty: FleetType) -> Arc<TypeSet> {
        let sets = self
            .inner
            .sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sets.get(&ty).cloned().unwrap_or_default()
    }

    /// Fires after every change of any type.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

fn make_set(mut items: Vec<Item>) -> TypeSet {
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for i in &items {
        for part in [i.name.as_bytes(), &i.value] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.update(&i.ttl.map_or(u128::MAX, |d| d.as_millis()).to_be_bytes());
    }
    let digest = ctx.finish();
    let version = digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    TypeSet { version, items }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, value: &[u8]) -> Item {
        Item {
            name: name.to_owned(),
            value: value.to_vec(),
            ttl: None,
        }
    }

    #[test]
    fn versions_follow_content_not_order_or_time() {
        let p = Published::new();
        let empty = p.get(FleetType::Sandbox).version.clone();
        let rx = p.subscribe();
        let v1 = p.set(FleetType::Sandbox, vec![item("b", b"2"), item("a", b"1")]);
        assert_ne!(v1, empty);
        assert!(rx.has_changed().unwrap());
        let mut rx = p.subscribe();
        rx.mark_unchanged();
        let again = p.set(FleetType::Sandbox, vec![item("a", b"1"), item("b", b"2")]);
        assert_eq!(again, v1, "same content, same version");
        assert!(!rx.has_changed().unwrap(), "no change, no wake-up");
        let other = Published::new();
        assert_eq!(
            other.set(FleetType::Sandbox, vec![item("a", b"1"), item("b", b"2")]),
            v1,
            "a restarted server announces the same version for the same state"
        );
        let mut ttl = item("a", b"1");
        ttl.ttl = Some(Duration::from_secs(5));
        assert_ne!(p.set(FleetType::Sandbox, vec![ttl, item("b", b"2")]), v1);
        assert_eq!(p.get(FleetType::Sandbox).items[0].name, "a");
        assert_eq!(p.get(FleetType::Revocation).version, empty);
    }
}
