//! Sandboxes as configured (`sandboxes:`) and the checks every registration passes, whether
//! it comes from the config file or from the admin API: a usable id, an existing profile, one
//! way to be identified, and source ranges no other sandbox claims.
//!
//! This module validates shapes; it does not read token files or keep the live registry
//! (`state::sandboxes` does).

use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

/// Longest sandbox id.
pub const MAX_ID_LEN: usize = 64;

/// A sandbox from the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SandboxConfig {
    pub id: String,
    pub profile: String,
    /// Source ranges that identify it (empty when it is identified by token).
    pub sources: Vec<IpNet>,
    /// A file holding its proxy token.
    pub token_file: Option<PathBuf>,
}

/// Why an id is unusable, or `None` when it is fine: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting
/// with a letter or digit (it appears in URLs, metric labels and handle claims).
pub fn id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (!ok).then(|| {
        format!(
            "`{}` is not a sandbox id: use 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit",
            id.escape_debug()
        )
    })
}

/// Whether two source ranges share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first range in `sources` that overlaps one of `taken` (owner, range), as a message.
pub fn source_conflict<'a>(
    sources: &[IpNet],
    taken: impl Iterator<Item = (&'a str, &'a IpNet)> + Clone,
) -> Option<String> {
    for (i, s) in sources.iter().enumerate() {
        if let Some(other) = sources[..i].iter().find(|o| overlaps(o, s)) {
            return Some(format!("{s} overlaps {other} of the same sandbox"));
        }
        if let Some((owner, net)) = taken.clone().find(|(_, n)| overlaps(n, s)) {
            return Some(format!(
                "{s} overlaps {net} of sandbox `{owner}`: a source address must identify one sandbox"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["sbx-1", "ci.7", "A_b", "9"] {
            assert!(id_problem(ok).is_none(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a/b", "ü", &"a".repeat(65)] {
            assert!(id_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn overlapping_sources() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(overlaps(&n("10.0.0.0/24"), &n("10.0.0.7/32")));
        assert!(overlaps(&n("10.0.0.7/32"), &n("10.0.0.0/24")));
        assert!(!overlaps(&n("10.0.0.0/24"), &n("10.0.1.0/24")));
        assert!(!overlaps(&n("::1/128"), &n("127.0.0.1/32")));
        let taken = [("a".to_owned(), n("10.0.0.0/24"))];
        let iter = taken.iter().map(|(o, n)| (o.as_str(), n));
        assert!(source_conflict(&[n("10.0.0.9/32")], iter.clone()).is_some());
        assert!(source_conflict(&[n("10.0.1.9/32")], iter.clone()).is_none());
        assert!(source_conflict(&[n("10.0.1.0/24"), n("10.0.1.9/32")], iter).is_some());
    }
}
