//! Fleet resources off the wire: each type's protobuf message decoded and checked into what
//! the edge applies. A response is judged whole: the first bad resource rejects it (the
//! reason names the resource, never a token), so the caller NACKs and keeps the last good set.
//!
//! It checks shape only (names, ids, hashes); whether a sandbox fits the other sandboxes or a
//! profile builds is for the registry and the config loader.

use std::collections::BTreeSet;

use egress_handle::{RevocationEntry, RevokeTarget};
use egress_sds::fleet::Item;
use egress_sds::proto::fleet::{self as pb, revocation::Kind};
use prost::Message;

use crate::state::sandboxes::FleetSandbox;
use crate::state::sandboxes::store::unhex;

/// The name of the one kill-switch resource.
pub const KILL_SWITCH_NAME: &str = "kill-switch";

/// Checks that a wrapped resource's name (empty when unwrapped) agrees with the name the
/// message gives itself, and that no name comes twice.
fn named(seen: &mut BTreeSet<String>, item: &Item, name: String) -> Result<(), String> {
    if !item.name.is_empty() && item.name != name {
        return Err(format!(
            "resource {:?} carries a message named {name:?}",
            item.name
        ));
    }
    if !seen.insert(name.clone()) {
        return Err(format!("resource {name:?} appears twice"));
    }
    Ok(())
}

fn decode<M: Message + Default>(item: &Item, what: &str) -> Result<M, String> {
    M::decode(item.value.as_slice()).map_err(|e| {
        let name = if item.name.is_empty() {
            String::new()
        } else {
            format!(" {:?}", item.name)
        };
        format!("{what}{name} does not decode: {e}")
    })
}

/// `Revocation` resources, named `id/HEX`, `session/NAME` or `sandbox/NAME`, one at a time:
/// the good ones, and why each bad one is bad. A restriction is worth taking even from a
/// response that is refused.
pub fn revocations_each(items: &[Item]) -> (Vec<RevocationEntry>, Vec<String>) {
    let mut seen = BTreeSet::new();
    let mut good = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for item in items {
        match revocation(&mut seen, item) {
            Ok(r) => good.push(r),
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

fn revocation(seen: &mut BTreeSet<String>, item: &Item) -> Result<RevocationEntry, String> {
    {
        let r: pb::Revocation = decode(item, "revocation")?;
        let (prefix, target) = match Kind::try_from(r.kind) {
            Ok(Kind::Id) => ("id", RevokeTarget::Id(r.key.clone())),
            Ok(Kind::Session) => ("session", RevokeTarget::Session(r.key.clone())),
            Ok(Kind::Sandbox) => ("sandbox", RevokeTarget::Sandbox(r.key.clone())),
            Ok(Kind::Unspecified) | Err(_) => {
                // Unwrapped, the resource has no name of its own: the key identifies it.
                let which = if item.name.is_empty() {
                    format!("with key {:?}", r.key)
                } else {
                    format!("{:?}", item.name)
                };
                return Err(format!(
                    "revocation {which}: kind must be ID, SESSION or SANDBOX, not {}",
                    r.kind
                ));
            }
        };
        named(seen, item, format!("{prefix}/{}", r.key))?;
        if r.expires_at < r.revoked_at {
            return Err(format!(
                "revocation {prefix}/{}: expires_at is before revoked_at",
                r.key
            ));
        }
        Ok(RevocationEntry {
            target,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
        })
    }
}

/// `Profile` resources: (name, spec) pairs, the spec still to be built by the config loader.
pub fn profiles(items: &[Item]) -> Result<Vec<(String, String)>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let p: pb::Profile = decode(item, "profile")?;
        named(&mut seen, item, p.name.clone())?;
        out.push((p.name, p.spec));
    }
    Ok(out)
}

/// `Sandbox` resources.
pub fn sandboxes(items: &[Item]) -> Result<Vec<FleetSandbox>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s: pb::Sandbox = decode(item, "sandbox")?;
        named(&mut seen, item, s.id.clone())?;
        let token = if s.token_sha256.is_empty() {
            None
        } else {
            Some(unhex(&s.token_sha256).ok_or_else(|| {
                format!(
                    "sandbox {:?}: token_sha256 is not 64 lowercase hex digits",
                    s.id
                )
            })?)
        };
        out.push(FleetSandbox {
            id: s.id,
            profile: s.profile,
            sources: s.sources,
            token,
        });
    }
    Ok(out)
}

/// The `KillSwitch` resource: none (off) or one named `kill-switch`.
pub fn kill_switch(items: &[Item]) -> Result<Option<pb::KillSwitch>, String> {
    match items {
        [] => Ok(None),
        [item] => {
            if !item.name.is_empty() && item.name != KILL_SWITCH_NAME {
                return Err(format!(
                    "the kill switch resource is named {KILL_SWITCH_NAME:?}, not {:?}",
                    item.name
                ));
            }
            decode(item, "kill switch").map(Some)
        }
        _ => Err(format!(
            "{} kill switch resources: there is exactly one",
            items.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<M: Message>(name: &str, m: &M) -> Item {
        Item {
            name: name.to_owned(),
            value: m.encode_to_vec(),
            ttl: None,
        }
    }

    fn rev(kind: Kind, key: &str) -> pb::Revocation {
        pb::Revocation {
            kind: kind as i32,
            key: key.to_owned(),
            revoked_at: 100,
            expires_at: 200,
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn revocation_table() {
        let (ok, bad) = revocations_each(&[
            item(&format!("id/{ID}"), &rev(Kind::Id, ID)),
            item("session/s-1", &rev(Kind::Session, "s-1")),
            item("", &rev(Kind::Sandbox, "sbx")),
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[1].target, RevokeTarget::Session("s-1".into()));
        let cases: Vec<(Vec<Item>, &str)> = vec![
            (
                vec![item("x", &rev(Kind::Unspecified, "a"))],
                "revocation \"x\": kind must be",
            ),
            (
                vec![item("", &rev(Kind::Unspecified, "a"))],
                "revocation with key \"a\": kind must be ID, SESSION or SANDBOX, not 0",
            ),
            (
                vec![item("session/b", &rev(Kind::Session, "a"))],
                "carries a message named",
            ),
            (
                vec![
                    item("", &rev(Kind::Session, "a")),
                    item("", &rev(Kind::Session, "a")),
                ],
                "appears twice",
            ),
            (
                vec![item(
                    "",
                    &pb::Revocation {
                        expires_at: 1,
                        ..rev(Kind::Session, "a")
                    },
                )],
                "before revoked_at",
            ),
            (
                vec![Item {
                    name: "id/x".into(),
                    value: vec![0xff, 0xff],
                    ttl: None,
                }],
                "does not decode",
            ),
        ];
        for (items, want) in cases {
            let (_, bad) = revocations_each(&items);
            let e = bad.first().unwrap();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn sandbox_and_kill_switch_table() {
        let hash = "ab".repeat(32);
        let s = |id: &str, token: &str| pb::Sandbox {
            id: id.into(),
            profile: "p".into(),
            sources: vec!["10.0.0.1/32".into()],
            token_sha256: token.into(),
        };
        let got = sandboxes(&[item("a", &s("a", "")), item("b", &s("b", &hash))]).unwrap();
        assert!(got[0].token.is_none() && got[1].token.is_some());
        let e = sandboxes(&[item("a", &s("a", "zz"))]).unwrap_err();
        assert!(e.contains("token_sha256") && !e.contains("zz"), "{e}");
        assert!(
            sandboxes(&[item("a", &s("a", "")), item("a", &s("a", ""))])
                .unwrap_err()
                .contains("twice")
        );

        let on = pb::KillSwitch {
            enabled: true,
            reason: "incident".into(),
        };
        assert!(kill_switch(&[]).unwrap().is_none());
        assert!(
            kill_switch(&[item(KILL_SWITCH_NAME, &on)])
                .unwrap()
                .unwrap()
                .enabled
        );
        assert!(kill_switch(&[item("other", &on)]).is_err());
        assert!(kill_switch(&[item("", &on), item("", &on)]).is_err());
    }
}
