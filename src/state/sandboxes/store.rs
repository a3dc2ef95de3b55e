//! The sandboxes registered over the admin API, persisted in `state_dir/sandboxes.json` so they
//! survive a restart. Tokens are stored as SHA-256 hashes only; the file is replaced atomically
//! (temporary file, fsync, rename) with mode 0600. Sandboxes from the config file are not
//! written here: the config is their source.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::SandboxError;
use super::token::TokenHash;

pub const FILE: &str = "sandboxes.json";
const VERSION: u32 = 1;

/// One registration as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub id: String,
    pub profile: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<IpNet>,
    /// Hex SHA-256 of the proxy token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    sandboxes: Vec<Stored>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The stored registrations; none when the file does not exist yet.
pub fn read(path: &Path) -> Result<Vec<Stored>, SandboxError> {
    let bad = |detail: String| SandboxError::Store {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let file: FileFormat = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if file.version != VERSION {
        return Err(bad(format!("unsupported version {}", file.version)));
    }
    Ok(file.sandboxes)
}

/// Replaces the file with `entries`.
pub fn write(path: &Path, entries: &[Stored]) -> Result<(), SandboxError> {
    let bad = |e: std::io::Error| SandboxError::Store {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let body = serde_json::to_vec_pretty(&FileFormat {
        version: VERSION,
        sandboxes: entries.to_vec(),
    })
    .map_err(|e| SandboxError::Store {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(bad)
}

pub fn hex(hash: &TokenHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<TokenHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert!(read(&p).unwrap().is_empty());
        let entries = vec![
            Stored {
                id: "a".into(),
                profile: "p".into(),
                sources: vec!["10.0.0.2/32".parse().unwrap()],
                token_sha256: None,
            },
            Stored {
                id: "b".into(),
                profile: "p".into(),
                sources: vec![],
                token_sha256: Some(hex(&[7; 32])),
            },
        ];
        write(&p, &entries).unwrap();
        assert_eq!(read(&p).unwrap(), entries);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
        std::fs::write(&p, "{\"version\":2,\"sandboxes\":[]}").unwrap();
        assert!(read(&p).is_err());
    }
}
