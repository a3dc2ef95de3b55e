//! One destination rule ([`Rule`]) and its request-level rules ([`RequestRules`]): the methods
//! and paths a bumped destination allows, and the deny entries that refuse some requests it
//! would otherwise allow (allow `git-upload-pack`, refuse `git-receive-pack`).
//!
//! Paths are matched on the normalised path ([`path::normalize`]: dot segments, `;`
//! parameters and percent-encoding resolved), so `/v1/..;/admin` and `/v1/%2e%2e/admin` do not
//! pass a `/v1/` rule; a path that cannot be normalised unambiguously is refused whenever a
//! path rule has to look at it. Servers disagree about `;`: Java containers cut `;params` from
//! a segment (`..;` is `..`), nginx and Go keep them as part of the name. A path with a raw `;`
//! is therefore read both ways ([`readings`]): it is allowed only if every reading is inside
//! the allowed paths, and refused if any reading hits a deny entry. This module is pure: it
//! reads no clock and opens no socket.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::path::{self, PathPattern};
use super::{Credential, HostPattern, Rung, Scheme};

/// Whether a would-deny decision refuses (`enforce`) or is logged and let through (`report`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// One destination rule, typed.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Stable id for logs and refusal bodies: the config's `id`, else `destinations[N]`.
    pub id: Arc<str>,
    pub pattern: HostPattern,
    /// `None`: the scheme's default port only.
    pub ports: Option<Vec<u16>>,
    pub rung: Rung,
    pub credential: Option<Credential>,
    pub require_handle: bool,
    /// Methods, paths and deny entries for the requests of a bumped destination.
    pub requests: RequestRules,
    /// This destination's own mode; `None` takes the profile's.
    pub mode: Option<Mode>,
}

impl Rule {
    pub(super) fn covers_port(&self, port: u16, scheme: Scheme) -> bool {
        match &self.ports {
            Some(ports) => ports.contains(&port),
            None => port == scheme.default_port(),
        }
    }
}

/// Which requests a matched match entry covers: all of `methods` (when set) and any of `paths`
/// (when set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<PathPattern>>,
}

impl RequestMatch {
    /// Whether the request is covered, under any of the path's readings.
    fn covers(&self, method: &str, readings: &[String]) -> bool {
        let method_ok = self
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == method));
        let path_ok = match &self.paths {
            None => true,
            Some(ps) => readings.iter().any(|r| ps.iter().any(|pat| pat.matches(r))),
        };
        method_ok && path_ok
    }
}

/// The request-level rules of a bump destination. Empty means every request is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestRules {
    /// Allowed methods (exact, case-sensitive); `None` allows any.
    pub methods: Option<Vec<String>>,
    /// Allowed path patterns; `None` allows any path.
    pub paths: Option<Vec<PathPattern>>,
    /// Requests refused even when `methods` and `paths` allow them.
    pub deny: Vec<RequestMatch>,
}

/// What a request-level rule refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denied {
    /// The whole destination (connection-level decision).
    Destination,
    /// The request's method.
    Method,
    /// The request's path (outside the allowed paths, matched by a deny entry, or not
    /// normalisable).
    Path,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Destination => "destination_denied",
            Denied::Method => "method_denied",
            Denied::Path => "path_denied",
        }
    }
}

/// Why a request was (or, in report mode, would have been) refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestDenial {
    pub what: Denied,
    /// For a person: which rule said no and why. Quotes the normalised path, never headers.
    pub detail: String,
}

impl fmt::Display for RequestDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Longest stretch of a guest's path quoted in a denial.
const QUOTED_PATH: usize = 120;

fn quoted(path: &str) -> String {
    let mut s: String = path
        .chars()
        .take(QUOTED_PATH)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if path.chars().count() > QUOTED_PATH {
        s.push('…');
    }
    s
}

/// The normalised readings of a request target: one, or — when the path has a raw `;` — also
/// the reading of a server that keeps `;params` as part of the segment name.
pub fn readings(target: &str) -> Result<Vec<String>, path::PathError> {
    let cut = target.find(['?', '#']).unwrap_or(target.len());
    let (raw_path, rest) = target.split_at(cut);
    let mut out = vec![path::normalize(target)?];
    if raw_path.contains(';') {
        let literal = format!("{}{rest}", raw_path.replace(';', "%3B"));
        let kept = path::normalize(&literal)?;
        if kept != out[0] {
            out.push(kept);
        }
    }
    Ok(out)
}

impl RequestRules {
    pub fn is_empty(&self) -> bool {
        self.methods.is_none() && self.paths.is_none() && self.deny.is_empty()
    }

    fn needs_path(&self) -> bool {
        self.paths.is_some() || self.deny.iter().any(|d| d.paths.is_some())
    }

    /// Checks one request (`target` is its request-target: path and query) against these
    /// rules of rule `rule_id`.
    pub fn check(&self, rule_id: &str, method: &str, target: &str) -> Result<(), RequestDenial> {
        if self.is_empty() {
            return Ok(());
        }
        if let Some(ms) = &self.methods
            && !ms.iter().any(|m| m == method)
        {
            return Err(RequestDenial {
                what: Denied::Method,
                detail: format!(
                    "method {} is not allowed by rule `{rule_id}` (allowed: {})",
                    quoted(method),
                    ms.join(", ")
                ),
            });
        }
        let readings = if self.needs_path() {
            match readings(target) {
                Ok(r) => r,
                Err(e) => {
                    return Err(RequestDenial {
                        what: Denied::Path,
                        detail: format!(
                            "rule `{rule_id}` matches paths, and this one cannot be read unambiguously: {e}"
                        ),
                    });
                }
            }
        } else {
            Vec::new()
        };
        if let Some(ps) = &self.paths
            && let Some(outside) = readings
                .iter()
                .find(|r| !ps.iter().any(|pat| pat.matches(r)))
        {
            let allowed: Vec<String> = ps.iter().map(ToString::to_string).collect();
            return Err(RequestDenial {
                what: Denied::Path,
                detail: format!(
                    "path {} is outside the paths rule `{rule_id}` allows ({})",
                    quoted(outside),
                    allowed.join(", ")
                ),
            });
        }
        if let Some(i) = self.deny.iter().position(|d| d.covers(method, &readings)) {
            let what = if self.deny[i].paths.is_some() {
                Denied::Path
            } else {
                Denied::Method
            };
            let shown = readings.first().map_or("", String::as_str);
            return Err(RequestDenial {
                what,
                detail: format!(
                    "{} {} is refused by rule `{rule_id}` (deny[{i}])",
                    quoted(method),
                    quoted(shown)
                ),
            });
        }
        Ok(())
    }
}
