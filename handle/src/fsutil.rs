//! File-system helpers for the state directory: 0700 directory creation, temp files that are
//! fsynced before being published, atomic replace (rename) and first-writer-wins publish
//! (hard link).
//!
//! This module knows nothing about keys or revocations; it only moves bytes safely.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom as _;

use crate::error::HandleError;

/// Creates `dir` (and parents) with mode 0700 if missing; an existing directory is left as is.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), HandleError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| HandleError::io("creating state directory", dir, e))
}

/// Reads a file, `Ok(None)` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, HandleError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HandleError::io("reading", path, e)),
    }
}

/// Replaces `path` atomically: readers see the old or the new contents, never a mix.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), HandleError> {
    let dir = parent(path);
    let tmp = TempFile::write(dir, &file_name(path), contents, mode)?;
    fs::rename(&tmp.path, path).map_err(|e| HandleError::io("replacing", path, e))?;
    sync_dir(dir);
    Ok(())
}

/// Publishes `contents` at `path` only if nothing is there yet. `Ok(false)` means another
/// writer got there first and its (complete) file was kept.
pub(crate) fn publish_exclusive(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<bool, HandleError> {
    let dir = parent(path);
    let tmp = TempFile::write(dir, &file_name(path), contents, mode)?;
    // hard_link fails if the target exists, unlike rename: this is the one atomic claim, and
    // the target only ever appears complete because the temp file was fsynced first.
    match fs::hard_link(&tmp.path, path) {
        Ok(()) => {
            sync_dir(dir);
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(HandleError::io("publishing", path, e)),
    }
}

/// Logs a warning when a secret file is readable by group or others.
pub(crate) fn warn_if_exposed(path: &Path, what: &str) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "{what} is readable by group or others; chmod 600 it"
            );
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Durability of directory entries is best effort: the data itself was fsynced, and failing a
/// revocation or startup because the directory could not be synced would help no one.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A uniquely named, fully written and synced file, removed on drop unless renamed away.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(
        dir: &Path,
        final_name: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<Self, HandleError> {
        let mut attempt = 0u32;
        loop {
            let path = dir.join(format!(
                ".{final_name}.{}.{}.tmp",
                std::process::id(),
                unique_suffix(attempt)
            ));
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path);
            let mut file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(HandleError::io("creating", &path, e)),
            };
            let guard = TempFile { path };
            // The umask can only narrow the mode; set it exactly so a public file stays readable.
            fs::set_permissions(&guard.path, fs::Permissions::from_mode(mode))
                .map_err(|e| HandleError::io("setting permissions on", &guard.path, e))?;
            file.write_all(contents)
                .and_then(|()| file.sync_all())
                .map_err(|e| HandleError::io("writing", &guard.path, e))?;
            return Ok(guard);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a successful rename the path no longer exists; the error is expected then.
        let _ = fs::remove_file(&self.path);
    }
}

/// Distinguishes temp files of threads within one process (the pid covers other processes).
fn unique_suffix(attempt: u32) -> String {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Not security relevant: collisions are retried via create_new.
        return format!("{attempt}");
    }
    format!("{}{attempt}", crate::claims::hex(&bytes))
}
