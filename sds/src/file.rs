//! The secrets file (`secrets.file` and `sds serve --secrets`): parsing, reading referenced
//! files and variables, validation, and a content version.
//!
//! It does not watch the file (see `file_source`). The YAML is walked as a generic value rather
//! than derived into structs: serde's type errors quote the offending scalar (`invalid type:
//! string "sk-..."`), which here would be a secret. Unknown keys are rejected all the same.
//!
//! Format:
//! ```yaml
//! secrets:
//!   openai-key: { value: "sk-..." }          # or { file: path } or { env: VAR }
//!   example-client: { values: { client_id: "...", client_secret: { file: cs.txt } } }
//!   spiffe-svid: { certificate: svid.pem, private_key: svid-key.pem }
//!   corp-roots: { trusted_ca: roots.pem }
//! ```
//! Relative paths are relative to the secrets file's directory. One trailing line ending is
//! trimmed from `file:` values, because `echo key > file` is how most such files are made and
//! a newline in a header value would break the request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ring::hmac;
use serde_yaml_ng::{Mapping, Value};

use crate::error::SdsError;
use crate::secret::{Secret, SecretBytes};

/// Referenced files larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

const KEYS: &[&str] = &[
    "value",
    "file",
    "env",
    "values",
    "certificate",
    "private_key",
    "trusted_ca",
];

/// Reads, parses and validates a secrets file. Errors are located (`secrets.NAME.KEY: ...`)
/// and never contain a secret value.
pub fn load_secrets_file(path: &Path) -> Result<BTreeMap<String, Secret>, SdsError> {
    let fail = |message: String| SdsError::SecretsFile {
        path: path.to_path_buf(),
        message,
    };
    let text = read_capped(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| fail("is not UTF-8".into()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_secrets(&text, base).map_err(fail)
}

/// Parses secrets-file YAML; relative paths are resolved against `base`.
pub fn parse_secrets(text: &str, base: &Path) -> Result<BTreeMap<String, Secret>, String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let root = match doc {
        Value::Mapping(m) => m,
        Value::Null => return Err("is empty: expected a top-level `secrets:` map".into()),
        _ => return Err("expected a top-level map with a `secrets:` key".into()),
    };
    let mut secrets = BTreeMap::new();
    for (key, value) in root {
        match key.as_str() {
            Some("secrets") => {}
            Some(other) => {
                return Err(format!(
                    "unknown top-level key `{other}` (expected `secrets`)"
                ));
            }
            None => return Err("top-level keys must be strings".into()),
        }
        let entries = match value {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => return Err("secrets: expected a map of secret name to definition".into()),
        };
        for (name, entry) in entries {
            let name = name
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or("secrets: secret names must be non-empty strings")?
                .to_string();
            let secret = parse_entry(&name, entry, base)?;
            secret
                .validate()
                .map_err(|e| format!("secrets.{name}: {e}"))?;
            secrets.insert(name, secret);
        }
    }
    Ok(secrets)
}

fn parse_entry(name: &str, entry: Value, base: &Path) -> Result<Secret, String> {
    let Value::Mapping(map) = entry else {
        return Err(format!(
            "secrets.{name}: expected a map such as {{ value: \"...\" }}, {{ file: path }}, \
             {{ env: VAR }}, {{ values: {{...}} }}, {{ certificate: F, private_key: F }} or \
             {{ trusted_ca: F }}"
        ));
    };
    let mut fields: BTreeMap<&'static str, Value> = BTreeMap::new();
    for (k, v) in map {
        let k = k.as_str().unwrap_or("<non-string>").to_string();
        let Some(known) = KEYS.iter().find(|known| **known == k) else {
            return Err(format!(
                "secrets.{name}: unknown key `{k}` (expected one of {})",
                KEYS.join(", ")
            ));
        };
        fields.insert(known, v);
    }
    let present: Vec<&str> = fields.keys().copied().collect();
    let at = |key: &str| format!("secrets.{name}.{key}");
    match present.as_slice() {
        [single @ ("value" | "file" | "env")] => {
            let v = fields.remove(single).unwrap_or(Value::Null);
            Ok(Secret::generic(single_value(&at(single), single, v, base)?))
        }
        ["values"] => {
            let Some(Value::Mapping(m)) = fields.remove("values") else {
                return Err(format!("{}: expected a map of key to value", at("values")));
            };
            let mut values = BTreeMap::new();
            for (k, v) in m {
                let k = k
                    .as_str()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| format!("{}: keys must be non-empty strings", at("values")))?
                    .to_string();
                let here = format!("{}.{k}", at("values"));
                let value = match v {
                    Value::String(s) => SecretBytes::from(s),
                    Value::Mapping(inner) => nested_value(&here, inner, base)?,
                    _ => {
                        return Err(format!(
                            "{here}: expected a string or {{ value | file | env: ... }}"
                        ));
                    }
                };
                values.insert(k, value);
            }
            Ok(Secret::Generic {
                value: None,
                values,
            })
        }
        ["certificate", "private_key"] => {
            let cert = path_field(&at("certificate"), fields.remove("certificate"))?;
            let key = path_field(&at("private_key"), fields.remove("private_key"))?;
            let chain = read_file(&at("certificate"), &cert, base)?;
            Ok(Secret::TlsCertificate {
                chain_pem: String::from_utf8(chain)
                    .map_err(|_| format!("{}: file is not UTF-8 PEM", at("certificate")))?,
                key_pem: SecretBytes::new(read_file(&at("private_key"), &key, base)?),
            })
        }
        ["trusted_ca"] => {
            let ca = path_field(&at("trusted_ca"), fields.remove("trusted_ca"))?;
            let pem = read_file(&at("trusted_ca"), &ca, base)?;
            Ok(Secret::ValidationContext {
                trusted_ca_pem: String::from_utf8(pem)
                    .map_err(|_| format!("{}: file is not UTF-8 PEM", at("trusted_ca")))?,
            })
        }
        ["certificate"] => Err(format!(
            "{}: is missing (certificate needs it)",
            at("private_key")
        )),
        ["private_key"] => Err(format!(
            "{}: is missing (private_key needs it)",
            at("certificate")
        )),
        [] => Err(format!("secrets.{name}: is empty")),
        many => Err(format!(
            "secrets.{name}: set exactly one of value, file, env, values, \
             certificate + private_key, trusted_ca (found {})",
            many.join(", ")
        )),
    }
}

fn nested_value(here: &str, map: Mapping, base: &Path) -> Result<SecretBytes, String> {
    let mut it = map.into_iter();
    let (Some((k, v)), None) = (it.next(), it.next()) else {
        return Err(format!("{here}: expected exactly one of value, file, env"));
    };
    match k.as_str() {
        Some(kind @ ("value" | "file" | "env")) => {
            single_value(&format!("{here}.{kind}"), kind, v, base)
        }
        Some(other) => Err(format!(
            "{here}: unknown key `{other}` (expected value, file or env)"
        )),
        None => Err(format!("{here}: keys must be strings")),
    }
}

fn single_value(at: &str, kind: &str, v: Value, base: &Path) -> Result<SecretBytes, String> {
    let Value::String(s) = v else {
        return Err(format!("{at}: must be a string (quote it in YAML)"));
    };
    match kind {
        "value" => Ok(SecretBytes::from(s)),
        "file" => {
            let mut bytes = read_file(at, Path::new(&s), base)?;
            trim_line_ending(&mut bytes);
            Ok(SecretBytes::new(bytes))
        }
        _ => match std::env::var_os(&s) {
            Some(v) => Ok(SecretBytes::new(v.into_encoded_bytes())),
            None => Err(format!("{at}: environment variable {s} is not set")),
        },
    }
}

fn path_field(at: &str, v: Option<Value>) -> Result<PathBuf, String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        _ => Err(format!("{at}: expected a file path")),
    }
}

fn read_file(at: &str, path: &Path, base: &Path) -> Result<Vec<u8>, String> {
    read_capped(&base.join(path)).map_err(|e| format!("{at}: cannot read {}: {e}", path.display()))
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(buf)
}

fn trim_line_ending(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// A short version string for a set of secrets: a keyed hash (HMAC-SHA256 under a random key
/// made once per process) of the loaded contents, referenced files and variables included.
///
/// Equal contents give equal versions within a process, so an unchanged rewrite pushes
/// nothing. The key is why this is safe to publish (versions go to SDS clients, stats and
/// logs): a plain hash of the contents would let anyone holding a version test guesses of a
/// low-entropy secret offline. Versions therefore differ across restarts, which SDS clients
/// handle as an ordinary update.
pub fn content_version(secrets: &BTreeMap<String, Secret>) -> String {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let seed: [u8; 32] = rand::random();
        hmac::Key::new(hmac::HMAC_SHA256, &seed)
    });
    let mut ctx = hmac::Context::with_key(key);
    let mut field = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    for (name, secret) in secrets {
        field(name.as_bytes());
        field(secret.kind().as_bytes());
        match secret {
            Secret::Generic { value, values } => {
                match value {
                    Some(v) => {
                        field(b"some");
                        field(v.expose());
                    }
                    None => field(b"none"),
                }
                for (k, v) in values {
                    field(k.as_bytes());
                    field(v.expose());
                }
            }
            Secret::TlsCertificate { chain_pem, key_pem } => {
                field(chain_pem.as_bytes());
                field(key_pem.expose());
            }
            Secret::ValidationContext { trusted_ca_pem } => field(trusted_ca_pem.as_bytes()),
        }
    }
    let tag = ctx.sign();
    tag.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
