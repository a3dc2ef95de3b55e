//! The revocation list: handle ids, sessions and sandboxes that must no longer be accepted,
//! persisted in `state_dir/revoked.json` so revocations survive restarts and reach other
//! processes.
//!
//! - Reads ([`RevocationList::is_revoked`]) take a shared lock and do up to three hash lookups,
//!   cheap enough for every request.
//! - Writes merge with what is on disk under a lock file (`revoked.json.lock`), so a CLI
//!   `handle revoke --state-dir` and a running proxy never lose each other's entries, then
//!   replace the file atomically (temp file, fsync, rename; mode 0600).
//! - A running process picks up other processes' revocations only when
//!   [`RevocationList::reload_if_changed`] is called: it compares the file's inode, size and
//!   mtime with the last seen version (one `stat`-like call when nothing changed), so callers
//!   should poll it every second or so.
//! - Revoking a session revokes every handle of that session issued up to the revocation
//!   (plus the clock-skew allowance); handles minted for the session afterwards are valid.
//!   Revoking a sandbox does the same for the handles bound to that sandbox.
//! - The file is `{"version": 1, "ids": {…}, "sessions": {…}, "sandboxes": {…}}`, each map
//!   from the revoked key to its entry. `sandboxes` is always written and may be missing when
//!   read (files written before sandbox revocation existed).
//! - Entries carry `prune_after` = revocation time + max ttl + twice the clock skew: past that,
//!   every handle they could match has expired anyway, so writes drop them.
//!
//! Entries are never removed from a running process's memory before they are pruned, even if
//! the file disappears; this module fails closed and does not unrevoke.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::api::RevokeTarget;
use crate::claims::{Claims, hex, parse_id, unix_secs};
use crate::error::HandleError;
use crate::fsutil;
use crate::scope::valid_name;
use crate::verify::CLOCK_SKEW;

/// File name of the revocation list inside the state dir.
pub const REVOCATION_FILE: &str = "revoked.json";

const FILE_VERSION: u32 = 1;
/// How long a writer waits for another process's lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(5);
const LOCK_POLL: Duration = Duration::from_millis(10);
/// A lock file older than this was left by a crashed writer (writes take milliseconds).
const LOCK_STALE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Unix seconds of the revocation.
    revoked_at: u64,
    /// Unix seconds after which the entry can be forgotten.
    prune_after: u64,
}

impl Entry {
    fn merge(self, other: Entry) -> Entry {
        Entry {
            revoked_at: self.revoked_at.max(other.revoked_at),
            prune_after: self.prune_after.max(other.prune_after),
        }
    }
}

/// One revocation as exchanged between a control plane and its edges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationEntry {
    pub target: RevokeTarget,
    /// Unix seconds of the revocation.
    pub revoked_at: u64,
    /// Unix seconds after which every handle it could match has expired.
    pub expires_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    ids: BTreeMap<String, Entry>,
    sessions: BTreeMap<String, Entry>,
    /// Absent from files written before sandbox revocation existed.
    #[serde(default)]
    sandboxes: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, Default)]
struct Entries {
    ids: HashMap<[u8; 16], Entry>,
    sessions: HashMap<String, Entry>,
    sandboxes: HashMap<String, Entry>,
}

/// Adds `entry` under `key`, merging with an entry already there.
fn merge_into<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Entry>, key: K, entry: Entry) {
    let merged = map.get(&key).map_or(entry, |mine| mine.merge(entry));
    map.insert(key, merged);
}

impl Entries {
    fn merge(&mut self, other: &Entries) {
        for (id, e) in &other.ids {
            merge_into(&mut self.ids, *id, *e);
        }
        for (s, e) in &other.sessions {
            merge_into(&mut self.sessions, s.clone(), *e);
        }
        for (s, e) in &other.sandboxes {
            merge_into(&mut self.sandboxes, s.clone(), *e);
        }
    }

    fn prune(&mut self, now: u64) {
        self.ids.retain(|_, e| e.prune_after >= now);
        self.sessions.retain(|_, e| e.prune_after >= now);
        self.sandboxes.retain(|_, e| e.prune_after >= now);
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Entries, HandleError> {
        let bad = |detail: String| HandleError::RevocationFile {
            path: path.to_path_buf(),
            detail,
        };
        let file: FileFormat = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(bad(format!("unsupported version {}", file.version)));
        }
        let mut entries = Entries::default();
        for (id, e) in file.ids {
            let parsed = parse_id(&id)
                .filter(|p| hex(p) == id)
                .ok_or_else(|| bad("an id is not 32 lowercase hex digits".to_owned()))?;
            entries.ids.insert(parsed, e);
        }
        for (session, e) in file.sessions {
            if !valid_name(&session) {
                return Err(bad("a session name is invalid".to_owned()));
            }
            entries.sessions.insert(session, e);
        }
        for (sandbox, e) in file.sandboxes {
            if !valid_name(&sandbox) {
                return Err(bad("a sandbox name is invalid".to_owned()));
            }
            entries.sandboxes.insert(sandbox, e);
        }
        Ok(entries)
    }

    fn to_json(&self, path: &Path) -> Result<Vec<u8>, HandleError> {
        let file = FileFormat {
            version: FILE_VERSION,
            ids: self.ids.iter().map(|(id, e)| (hex(id), *e)).collect(),
            sessions: self.sessions.iter().map(|(s, e)| (s.clone(), *e)).collect(),
            sandboxes: self
                .sandboxes
                .iter()
                .map(|(s, e)| (s.clone(), *e))
                .collect(),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| HandleError::RevocationFile {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Identity of one version of the file: a rename-replace always changes the inode, and size
/// plus nanosecond mtime cover in-place edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// Revoked handle ids, sessions and sandboxes, shared by all verifications of a process.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    retention: Duration,
    entries: RwLock<Entries>,
    seen: Mutex<Option<FileStamp>>,
    /// Serialises this process's writers; the lock file serialises processes.
    writer: Mutex<()>,
}

impl RevocationList {
    /// Loads the list from `path` (a missing file is an empty list). `max_ttl` must be the
    /// longest handle lifetime any minter sharing this file allows; it sets how long entries
    /// are kept. A file that exists but cannot be parsed is an error: running without the
    /// revocations would silently re-enable revoked handles.
    pub fn load(path: &Path, max_ttl: Duration) -> Result<Self, HandleError> {
        let (entries, stamp) = match read_with_stamp(path)? {
            Some((bytes, stamp)) => (Entries::parse(&bytes, path)?, Some(stamp)),
            None => (Entries::default(), None),
        };
        Ok(RevocationList {
            path: path.to_path_buf(),
            retention: max_ttl.saturating_add(CLOCK_SKEW.saturating_mul(2)),
            entries: RwLock::new(entries),
            seen: Mutex::new(stamp),
            writer: Mutex::new(()),
        })
    }

    /// The file this list persists to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `claims` match a revoked id, or a revoked session or sandbox they were issued
    /// before (within the clock-skew allowance, so a minter with a fast clock cannot slip past).
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        if entries.ids.contains_key(&claims.id) {
            return true;
        }
        let issued_before = |map: &HashMap<String, Entry>, key: Option<&str>| {
            key.and_then(|k| map.get(k))
                .is_some_and(|e| claims.iat <= e.revoked_at.saturating_add(CLOCK_SKEW.as_secs()))
        };
        issued_before(&entries.sessions, claims.session())
            || issued_before(&entries.sandboxes, claims.sandbox())
    }

    /// Number of revoked ids, sessions and sandboxes currently remembered (for metrics).
    pub fn counts(&self) -> (usize, usize, usize) {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        (
            entries.ids.len(),
            entries.sessions.len(),
            entries.sandboxes.len(),
        )
    }

    /// Revokes the handle with this id (32 hex digits, as returned by mint).
    pub fn revoke_id(&self, id: &str) -> Result<(), HandleError> {
        self.revoke_id_at(id, SystemTime::now())
    }

    /// [`Self::revoke_id`] at a given time (tests, replays).
    pub fn revoke_id_at(&self, id: &str, now: SystemTime) -> Result<(), HandleError> {
        let parsed = parse_id(id).ok_or_else(|| {
            HandleError::BadRequest("a handle id is 32 hexadecimal characters".to_owned())
        })?;
        let entry = self.entry_at(now);
        self.update(now, |entries| merge_into(&mut entries.ids, parsed, entry))
    }

    /// Revokes every handle of `session` issued up to now.
    pub fn revoke_session(&self, session: &str) -> Result<(), HandleError> {
        self.revoke_session_at(session, SystemTime::now())
    }

    /// [`Self::revoke_session`] at a given time (tests, replays).
    pub fn revoke_session_at(&self, session: &str, now: SystemTime) -> Result<(), HandleError> {
        if !valid_name(session) {
            return Err(HandleError::BadRequest(
                "a session is 1 to 128 printable ASCII characters without spaces".to_owned(),
            ));
        }
        let entry = self.entry_at(now);
        self.update(now, |entries| {
            merge_into(&mut entries.sessions, session.to_owned(), entry);
        })
    }

    /// Revokes every handle bound to `sandbox` issued up to now.
    pub fn revoke_sandbox(&self, sandbox: &str) -> Result<(), HandleError> {
        self.revoke_sandbox_at(sandbox, SystemTime::now())
    }

    /// [`Self::revoke_sandbox`] at a given time (tests, replays).
    pub fn revoke_sandbox_at(&self, sandbox: &str, now: SystemTime) -> Result<(), HandleError> {
        if !valid_name(sandbox) {
            return Err(HandleError::BadRequest(
                "a sandbox is 1 to 128 printable ASCII characters without spaces".to_owned(),
            ));
        }
        let entry = self.entry_at(now);
        self.update(now, |entries| {
            merge_into(&mut entries.sandboxes, sandbox.to_owned(), entry);
        })
    }

    /// Re-reads the file if another process replaced it since this process last read or wrote
    /// it, merging its entries in. Returns whether anything was re-read.
    ///
    /// Call it periodically (about once a second): when nothing changed it costs one open and
    /// one fstat. On a parse error the entries already in memory stay in force.
    pub fn reload_if_changed(&self) -> Result<bool, HandleError> {
        let Some((mut file, stamp)) = open_with_stamp(&self.path)? else {
            return Ok(false);
        };
        let mut seen = lock(&self.seen);
        if *seen == Some(stamp) {
            return Ok(false);
        }
        let disk = Entries::parse(&read_all(&mut file, &self.path)?, &self.path)?;
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(&disk);
        *seen = Some(stamp);
        Ok(true)
    }

    /// Every entry remembered now (what a control plane publishes to its edges).
    pub fn entries(&self) -> Vec<RevocationEntry> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let one = |target: RevokeTarget, e: &Entry| RevocationEntry {
            target,
            revoked_at: e.revoked_at,
            expires_at: e.prune_after,
        };
        let mut out: Vec<RevocationEntry> = entries
            .ids
            .iter()
            .map(|(id, e)| one(RevokeTarget::Id(hex(id)), e))
            .chain(
                entries
                    .sessions
                    .iter()
                    .map(|(s, e)| one(RevokeTarget::Session(s.clone()), e)),
            )
            .chain(
                entries
                    .sandboxes
                    .iter()
                    .map(|(s, e)| one(RevokeTarget::Sandbox(s.clone()), e)),
            )
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    /// Merges revocations made elsewhere (a control plane), persistently: all are checked
    /// before any is taken, entries already known with the same or a later time are skipped
    /// (no write when nothing is new), and an entry is kept for this list's own retention
    /// counted from its revocation, whatever expiry the sender claims: the sender may allow shorter handle
    /// lifetimes than this process accepts, and its expiry would end the revocation while
    /// handles it covers still live here. Nothing is ever removed here. Returns how many
    /// entries were new or moved later.
    pub fn merge_entries(&self, list: &[RevocationEntry]) -> Result<usize, HandleError> {
        self.merge_entries_at(list, SystemTime::now())
    }

    /// [`Self::merge_entries`] at a given time (tests).
    pub fn merge_entries_at(
        &self,
        list: &[RevocationEntry],
        now: SystemTime,
    ) -> Result<usize, HandleError> {
        let now_secs = unix_secs(now);
        let mut incoming = Entries::default();
        for r in list {
            let entry = Entry {
                revoked_at: r.revoked_at,
                prune_after: r.revoked_at.saturating_add(self.retention.as_secs()),
            };
            match &r.target {
                RevokeTarget::Id(id) => {
                    let parsed = parse_id(id).filter(|p| hex(p) == *id).ok_or_else(|| {
                        HandleError::BadRequest(
                            "a revoked handle id is not 32 lowercase hex digits".to_owned(),
                        )
                    })?;
                    merge_into(&mut incoming.ids, parsed, entry);
                }
                RevokeTarget::Session(s) | RevokeTarget::Sandbox(s) if !valid_name(s) => {
                    return Err(HandleError::BadRequest(
                        "a revoked session or sandbox name is invalid".to_owned(),
                    ));
                }
                RevokeTarget::Session(s) => merge_into(&mut incoming.sessions, s.clone(), entry),
                RevokeTarget::Sandbox(s) => merge_into(&mut incoming.sandboxes, s.clone(), entry),
            }
        }
        incoming.prune(now_secs);
        let fresh = {
            let mine = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            let newer = |have: Option<&Entry>, e: &Entry| {
                have.is_none_or(|h| h.revoked_at < e.revoked_at || h.prune_after < e.prune_after)
            };
            incoming
                .ids
                .iter()
                .filter(|(k, e)| newer(mine.ids.get(*k), e))
                .count()
                + incoming
                    .sessions
                    .iter()
                    .filter(|(k, e)| newer(mine.sessions.get(*k), e))
                    .count()
                + incoming
                    .sandboxes
                    .iter()
                    .filter(|(k, e)| newer(mine.sandboxes.get(*k), e))
                    .count()
        };
        if fresh == 0 {
            return Ok(0);
        }
        self.update(now, |entries| entries.merge(&incoming))?;
        Ok(fresh)
    }

    fn entry_at(&self, now: SystemTime) -> Entry {
        let revoked_at = unix_secs(now);
        Entry {
            revoked_at,
            prune_after: revoked_at.saturating_add(self.retention.as_secs()),
        }
    }

    /// Read-merge-modify-write under both locks, then publish to memory.
    fn update(
        &self,
        now: SystemTime,
        change: impl FnOnce(&mut Entries),
    ) -> Result<(), HandleError> {
        let _writer = lock(&self.writer);
        let _file_lock = LockFile::acquire(&self.path)?;
        let mut next = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((bytes, _)) = read_with_stamp(&self.path)? {
            next.merge(&Entries::parse(&bytes, &self.path)?);
        }
        change(&mut next);
        next.prune(unix_secs(now));
        fsutil::write_atomic(&self.path, &next.to_json(&self.path)?, 0o600)?;
        let stamp = open_with_stamp(&self.path)?.map(|(_, s)| s);
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = next;
        *lock(&self.seen) = stamp;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are replaced whole, so a panic elsewhere cannot leave them half-made.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens the file and stamps exactly the version opened (fstat on the handle, so a concurrent
/// rename cannot pair one version's stamp with another's contents).
fn open_with_stamp(path: &Path) -> Result<Option<(File, FileStamp)>, HandleError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HandleError::io("opening", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| HandleError::io("inspecting", path, e))?;
    Ok(Some((file, FileStamp::of(&meta))))
}

fn read_all(file: &mut File, path: &Path) -> Result<Vec<u8>, HandleError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| HandleError::io("reading", path, e))?;
    Ok(bytes)
}

/// Reads the whole file with the stamp of the version read; `None` if it does not exist.
fn read_with_stamp(path: &Path) -> Result<Option<(Vec<u8>, FileStamp)>, HandleError> {
    match open_with_stamp(path)? {
        Some((mut file, stamp)) => Ok(Some((read_all(&mut file, path)?, stamp))),
        None => Ok(None),
    }
}

/// An exclusive lock between processes: whoever creates `<file>.lock` holds it.
struct LockFile {
    path: PathBuf,
}

impl LockFile {
    fn acquire(target: &Path) -> Result<Self, HandleError> {
        let mut name = target.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => return Ok(LockFile { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(HandleError::io("creating lock", &path, e)),
            }
            if is_stale(&path) {
                tracing::warn!(path = %path.display(), "removing stale revocation lock file");
                let _ = fs::remove_file(&path);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(HandleError::io(
                    "waiting for lock",
                    &path,
                    std::io::Error::new(
                        ErrorKind::TimedOut,
                        "another process holds it; remove it if no revocation is in progress",
                    ),
                ));
            }
            std::thread::sleep(LOCK_POLL);
        }
    }
}

fn is_stale(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > LOCK_STALE)
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Nothing useful to do if removal fails; a leftover lock goes stale and is broken.
        let _ = fs::remove_file(&self.path);
    }
}
