//! State shared by every connection: the current policy snapshot, the kill switch, shutdown
//! signals and the task tracker.
//!
//! A [`Snapshot`] is immutable; a reload ([`reload`]) builds a new one through
//! [`Snapshot::build`] and swaps it in, so a connection that took a snapshot keeps the decision
//! it was made with. This folder holds state; it does not serve traffic.

pub mod answers;
pub mod fleet_status;
pub mod issuers;
pub mod reload;
pub mod sandboxes;
pub mod snapshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::observe::metrics::Metrics;

pub use snapshot::{Snapshot, Sources};

/// How long a guest-resolver answer binds a name to its addresses: well past any TTL given
/// out (`dns.ttl` is at most 5 minutes), since clients cache answers longer than told.
const ANSWERS_KEPT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Denies new egress and closes open tunnels while enabled.
#[derive(Debug, Default)]
pub struct KillSwitch {
    enabled: AtomicBool,
    /// Cancelled (and replaced) when the switch is turned on; tunnels hold the current one.
    generation: Mutex<CancellationToken>,
}

impl KillSwitch {
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// The token that fires when the switch is next turned on.
    pub fn token(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, on: bool) {
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was = self.enabled.swap(on, Ordering::SeqCst);
        if on && !was {
            generation.cancel();
            *generation = CancellationToken::new();
        }
    }
}

#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    /// Counts snapshot swaps (a reload, fleet profiles, trust roots).
    generation: std::sync::atomic::AtomicU64,
    pub kill: KillSwitch,
    /// Stop accepting; ask keep-alive connections to close.
    pub draining: CancellationToken,
    /// Grace period over: end tunnels and sessions now.
    pub hard_stop: CancellationToken,
    pub tasks: TaskTracker,
    pub metrics: Metrics,
    /// What the guest resolver gave out, for the transparent listener's destination binding.
    pub answers: answers::GuestAnswers,
    /// Guest connections open at once, over every guest listener (`proxy.max_connections`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The sandboxes guest connections are identified as.
    pub sandboxes: sandboxes::Registry,
    /// The fleet stream's status when the fleet state comes from a control plane
    /// (`fleet.source`); the admin API then refuses local writes of that state.
    pub fleet: Option<Arc<fleet_status::FleetStatus>>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Metrics) -> Shared {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            snapshot.config.proxy.max_connections,
        ));
        Shared {
            sandboxes: sandboxes::Registry::empty(&snapshot.config),
            slots,
            current: ArcSwap::from_pointee(snapshot),
            generation: std::sync::atomic::AtomicU64::new(0),
            kill: KillSwitch::default(),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics,
            answers: answers::GuestAnswers::new(ANSWERS_KEPT),
            fleet: None,
        }
    }

    /// Marks the fleet state as owned by a control plane, reported through `status`.
    pub fn with_fleet(mut self, status: Arc<fleet_status::FleetStatus>) -> Shared {
        self.fleet = Some(status);
        self
    }

    /// Uses `registry` (loaded from the config and `state_dir`) for identification.
    pub fn with_sandboxes(mut self, registry: sandboxes::Registry) -> Shared {
        self.sandboxes = registry;
        self
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes with every snapshot swap.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}
