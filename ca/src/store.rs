//! The CA's home in the state directory: `ca-key.pem` (0600) and `ca.pem` (0644).
//!
//! Creates the CA on first start and reuses it afterwards, safely when several processes start
//! on one state dir at once: each writes complete temporary files, and the one whose hard link
//! to `ca-key.pem` succeeds wins and renames its certificate into place; the others discard
//! theirs and load the winner's. `ca.pem` therefore only ever appears after its key, complete.
//! This module does not validate certificates itself (that is [`DeploymentCa::from_pem`]).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::ca::DeploymentCa;
use crate::error::CaError;
use crate::generate::{self, CaOptions};

/// File name of the CA certificate inside the state dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the state dir.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long a starting process waits for a concurrent creator to finish writing `ca.pem`.
/// The creator needs a few milliseconds between its two links; seconds leave room for a slow disk.
const PEER_WAIT: Duration = Duration::from_secs(5);
const PEER_POLL: Duration = Duration::from_millis(25);

impl DeploymentCa {
    /// Loads the CA from `state_dir`, generating and storing one if there is none.
    ///
    /// The directory is created with mode 0700 if missing. An existing CA is validated (key
    /// matches, is a CA, currently valid) and reused. If it is name-constrained and does not
    /// cover every subtree in `opts.permitted`, this fails with
    /// [`CaError::ConstraintsDoNotCover`] rather than silently minting leaves clients reject.
    pub fn load_or_create(state_dir: &Path, opts: &CaOptions) -> Result<DeploymentCa, CaError> {
        ensure_dir(state_dir)?;
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);

        let ca = match load_existing(&cert_path, &key_path)? {
            Some(ca) => ca,
            None => match create(state_dir, &cert_path, &key_path, opts)? {
                Some(ca) => ca,
                // Another process won the race; its files are (or will shortly be) complete.
                None => wait_for_peer(&cert_path, &key_path)?,
            },
        };
        for wanted in &opts.permitted {
            if !ca.covers_subtree(wanted) {
                return Err(CaError::ConstraintsDoNotCover {
                    name: wanted.to_string(),
                    path: state_dir.to_path_buf(),
                });
            }
        }
        Ok(ca)
    }
}

fn ensure_dir(dir: &Path) -> Result<(), CaError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(CaError::io("creating state directory", dir, e)),
    }
}

/// `Ok(None)` when there is no CA yet (neither file), or when only the key exists and a peer
/// may still be writing the certificate — the caller then goes through creation, which loses
/// the race cleanly and waits.
fn load_existing(cert_path: &Path, key_path: &Path) -> Result<Option<DeploymentCa>, CaError> {
    let Some(cert_pem) = read_optional(cert_path)? else {
        return Ok(None);
    };
    let Some(key_pem) = read_optional(key_path)? else {
        return Err(CaError::MissingKey {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    };
    warn_if_key_exposed(key_path);
    let source = cert_path.display().to_string();
    DeploymentCa::from_pem(&cert_pem, &key_pem, &source).map(Some)
}

fn read_optional(path: &Path) -> Result<Option<Zeroizing<String>>, CaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(Zeroizing::new(text))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CaError::io("reading", path, e)),
    }
}

fn warn_if_key_exposed(key_path: &Path) {
    if let Ok(meta) = fs::metadata(key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                mode = format_args!("{mode:o}"),
                "CA private key is readable by group or others; chmod 600 it"
            );
        }
    }
}

/// Generates and publishes a CA. `Ok(None)` means another process published first.
fn create(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    opts: &CaOptions,
) -> Result<Option<DeploymentCa>, CaError> {
    let pems = generate::generate(opts)?;
    // Validate before publishing, so a defect can never be persisted and then reused.
    let ca = DeploymentCa::from_pem(
        &pems.cert_pem,
        &pems.key_pem,
        &cert_path.display().to_string(),
    )?;

    let tmp_key = TempFile::write(dir, CA_KEY_FILE, pems.key_pem.as_bytes(), 0o600)?;
    let tmp_cert = TempFile::write(dir, CA_CERT_FILE, pems.cert_pem.as_bytes(), 0o644)?;

    // hard_link fails if the target exists, unlike rename: this is the one atomic claim.
    match fs::hard_link(&tmp_key.path, key_path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(CaError::io("publishing", key_path, e)),
    }
    fs::rename(&tmp_cert.path, cert_path).map_err(|e| CaError::io("publishing", cert_path, e))?;
    sync_dir(dir);
    tracing::info!(
        path = %cert_path.display(),
        fingerprint_sha256 = %ca.fingerprint_sha256(),
        subject = %ca.subject(),
        "generated a new deployment CA; guests must trust it for bumped destinations"
    );
    Ok(Some(ca))
}

fn wait_for_peer(cert_path: &Path, key_path: &Path) -> Result<DeploymentCa, CaError> {
    let deadline = Instant::now() + PEER_WAIT;
    loop {
        if let Some(ca) = load_existing(cert_path, key_path)? {
            return Ok(ca);
        }
        if Instant::now() >= deadline {
            return Err(CaError::IncompleteCa {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            });
        }
        std::thread::sleep(PEER_POLL);
    }
}

/// Durability of the new directory entries is best effort: a lost CA after a power cut only
/// means a new one is generated, so an fsync failure here is not worth failing startup for.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A uniquely named file in the state dir, removed on drop (also on the losing path).
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(dir: &Path, final_name: &str, contents: &[u8], mode: u32) -> Result<Self, CaError> {
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
                Err(e) => return Err(CaError::io("creating", &path, e)),
            };
            let guard = TempFile { path };
            // The umask may have narrowed the mode; the cert must stay world-readable.
            fs::set_permissions(&guard.path, fs::Permissions::from_mode(mode))
                .map_err(|e| CaError::io("setting permissions on", &guard.path, e))?;
            file.write_all(contents)
                .and_then(|()| file.sync_all())
                .map_err(|e| CaError::io("writing", &guard.path, e))?;
            return Ok(guard);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Distinguishes temp files of threads within one process (the pid covers other processes).
fn unique_suffix(attempt: u32) -> String {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Not security relevant: collisions are retried via create_new.
        return format!("{attempt}");
    }
    format!("{}{attempt}", crate::ca::hex(&bytes))
}
