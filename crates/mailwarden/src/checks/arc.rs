//! ARC chain validation (RFC 8617 §5.2): mail-auth's verifier, plus the header rules it lets
//! through, which make the chain `fail`:
//! - ARC-Seal and ARC-Message-Signature are strict DKIM tag-lists (RFC 6376 §3.2: tag names
//!   start with a letter, no empty tag-spec, no duplicate tag);
//! - `a=` is present and not rsa-sha1 (RFC 8301);
//! - an AMS must not sign ARC-Seal headers (RFC 8617 §4.1.2);
//! - ARC headers present but no complete set is a broken chain, not "none" (§5.2 step 2);
//! - a chain longer than `arc.max_sets` fails without being verified.

use crate::dns::Dns;
use mail_auth::arc::ArcError;
use mail_auth::{ArcOutput, AuthenticatedMessage, DkimResult};

/// Verify the chain; one longer than `max_sets` fails unverified (each set costs a DNS
/// lookup and a seal over every set before it).
pub async fn verify<'x>(
    dns: &'x Dns,
    msg: &'x AuthenticatedMessage<'x>,
    max_sets: usize,
) -> ArcOutput<'x> {
    let sets = msg.as_headers.len().max(msg.ams_headers.len());
    if sets > max_sets {
        return ArcOutput::default().with_result(DkimResult::Fail(mail_auth::Error::Arc(
            ArcError::ChainTooLong,
        )));
    }
    let out = dns.auth.verify_arc(dns.params(msg)).await;
    let broken = match out.result() {
        DkimResult::Pass => structure_error(msg),
        DkimResult::None => {
            structure_error(msg).or_else(|| has_arc_headers(msg).then_some(ArcError::BrokenChain))
        }
        _ => None,
    };
    match broken {
        Some(err) => ArcOutput::default().with_result(DkimResult::Fail(mail_auth::Error::Arc(err))),
        None => out,
    }
}

fn has_arc_headers(msg: &AuthenticatedMessage) -> bool {
    msg.headers.iter().any(|(name, _)| {
        let name = String::from_utf8_lossy(name);
        [
            "ARC-Seal",
            "ARC-Message-Signature",
            "ARC-Authentication-Results",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    })
}

fn structure_error(msg: &AuthenticatedMessage) -> Option<ArcError> {
    for (name, value) in &msg.headers {
        let name = String::from_utf8_lossy(name);
        let seal = name.eq_ignore_ascii_case("ARC-Seal");
        let ams = name.eq_ignore_ascii_case("ARC-Message-Signature");
        if !(seal || ams) {
            continue;
        }
        let Some(tags) = tag_list(value) else {
            return Some(ArcError::BrokenChain);
        };
        let tag = |k: &str| tags.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if !matches!(tag("a"), Some("rsa-sha256" | "ed25519-sha256")) {
            return Some(ArcError::BrokenChain);
        }
        if ams
            && tag("h").is_some_and(|h| {
                h.split(':')
                    .any(|f| f.trim().eq_ignore_ascii_case("arc-seal"))
            })
        {
            return Some(ArcError::BrokenChain);
        }
    }
    None
}

/// RFC 6376 §3.2 tag-list; `None` if malformed. Values keep no whitespace.
fn tag_list(value: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut tags: Vec<(String, String)> = Vec::new();
    let specs: Vec<&str> = text.split(';').collect();
    for (i, spec) in specs.iter().enumerate() {
        if spec.trim().is_empty() {
            // Only a trailing ";" may leave an empty spec.
            if i == specs.len() - 1 {
                continue;
            }
            return None;
        }
        let (name, val) = spec.split_once('=')?;
        let name = name.trim();
        let mut chars = name.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return None;
        }
        if tags.iter().any(|(n, _)| n == name) {
            return None;
        }
        let val: String = val.chars().filter(|c| !c.is_whitespace()).collect();
        tags.push((name.to_string(), val));
    }
    Some(tags)
}

#[cfg(test)]
mod tests {
    use super::tag_list;

    #[test]
    fn tag_lists_are_strict() {
        assert!(tag_list(b"a=rsa-sha256; d=example.org; s=x;").is_some());
        assert!(tag_list(b"a=rsa-sha256; s=x;; d=example.org").is_none());
        assert!(tag_list(b"a=rsa-sha256; _=;").is_none());
        assert!(tag_list(b"a=rsa-sha256; a=rsa-sha256").is_none());
        let t = tag_list(b"a=rsa-sha256;\r\n h=from :\r\n to").unwrap_or_default();
        assert_eq!(t[1], ("h".to_string(), "from:to".to_string()));
    }
}
