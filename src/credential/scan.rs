//! Finding every handle-shaped value a request carries, and where.
//!
//! The method, the raw bytes of every header value (UTF-8 or not) and the URI are scanned by
//! `egress_handle::scan`: case-insensitively, percent-decoded, inside `Basic` credentials, in
//! linear time. Each find is classified well-formed (to be verified) or malformed (refused,
//! never forwarded). This module finds; deciding what a find means is the injector's.

use egress_handle::Candidate;
use http::HeaderName;
use http::request::Parts;

use crate::observe::metrics::Metrics;
use crate::refusal::{Kind, Refusal};

/// Where in the request a handle-shaped value was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Method,
    Header(HeaderName),
    /// In the URI; `param` names the query parameter whose value holds it, if any.
    Uri {
        param: Option<String>,
    },
}

/// One handle-shaped value and its place.
#[derive(Debug)]
pub struct Found {
    pub place: Place,
    pub candidate: Candidate<'static>,
}

impl Found {
    /// The exact token, for well-formed finds.
    pub fn token(&self) -> &str {
        self.candidate.text()
    }
}

/// Every handle-shaped value in the method, the header values and the URI.
pub fn request(parts: &Parts) -> Vec<Found> {
    let mut found = Vec::new();
    let mut push = |place: Place, bytes: &[u8]| {
        for c in egress_handle::scan(bytes) {
            found.push(Found {
                place: place.clone(),
                candidate: c.into_owned(),
            });
        }
    };
    push(Place::Method, parts.method.as_str().as_bytes());
    for (name, value) in &parts.headers {
        push(Place::Header(name.clone()), value.as_bytes());
    }
    let uri = parts.uri.to_string();
    for c in egress_handle::scan(uri.as_bytes()) {
        let param = query_param_at(&uri, c.span().start);
        found.push(Found {
            place: Place::Uri { param },
            candidate: c.into_owned(),
        });
    }
    found
}

/// The name of the query parameter whose value contains byte `at` of `uri`.
fn query_param_at(uri: &str, at: usize) -> Option<String> {
    let q = uri.find('?')? + 1;
    let end = uri.find('#').unwrap_or(uri.len());
    if at < q || at >= end {
        return None;
    }
    let mut start = q;
    for pair in uri[q..end].split('&') {
        let stop = start + pair.len();
        if at >= start && at < stop {
            let (name, _) = pair.split_once('=')?;
            return (at > start + name.len()).then(|| name.to_owned());
        }
        start = stop + 1;
    }
    None
}

/// Refuses a request that carries anything handle-shaped on a path where no credential can
/// apply (absolute-form plain HTTP): a handle never reaches an upstream.
pub fn refuse_stray_handles(
    metrics: &Metrics,
    parts: &Parts,
    host: &str,
    port: u16,
    rule: &str,
    sandbox: Option<&str>,
) -> Result<(), Refusal> {
    match request(parts).first() {
        Some(f) => Err(super::exfiltration(
            metrics,
            f,
            "",
            Refusal::new(Kind::HandleOutOfScope, host, port, rule),
            super::NO_CREDENTIAL,
            sandbox,
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_located() {
        let uri = "/v1/x?a=1&key=eeh_abc&b#frag";
        let at = uri.find("eeh_").unwrap();
        assert_eq!(query_param_at(uri, at).as_deref(), Some("key"));
        assert_eq!(query_param_at(uri, 1), None, "in the path");
        let name_pos = uri.find("key").unwrap();
        assert_eq!(
            query_param_at(uri, name_pos),
            None,
            "in a name, not a value"
        );
        assert_eq!(
            query_param_at("/p?eeh_x", 3),
            None,
            "a bare word is no parameter"
        );
    }

    #[test]
    fn every_place_is_scanned() {
        let req = http::Request::builder()
            .method("EEH_ABC")
            .uri("/x?key=%65eh_z")
            .header("x-a", &b"caf\xe9 eeh_q"[..])
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let found = request(&parts);
        let places: Vec<_> = found.iter().map(|f| f.place.clone()).collect();
        assert!(places.contains(&Place::Method), "{places:?}");
        assert!(places.contains(&Place::Header(HeaderName::from_static("x-a"))));
        assert!(places.contains(&Place::Uri {
            param: Some("key".into())
        }));
        assert!(found.iter().all(|f| !f.candidate.is_well_formed()));
    }
}
