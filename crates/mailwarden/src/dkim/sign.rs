//! Computing DKIM signatures (RFC 6376 §3.5, §3.7, §5.4; relaxed/relaxed only).
//!
//! mail-auth supplies the keys, the canonicalization and the signature's text; the header
//! selection is ours so that `h=` lists exactly what was signed: each configured field as
//! often as it occurs, bottom-up (§5.4.2), and `From` once more than it occurs (oversigning,
//! §8.15), which makes a later-added `From:` break the signature.

use super::keys::{DomainKey, Key};
use mail_auth::common::crypto::{Algorithm as SigAlgorithm, SigningKey};
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::{Canonicalization, Signature};

/// A header field: its name, and its value with the final CRLF.
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// Split a message into its header fields (those with a name; [`crate::header::fields`])
/// and its body.
pub fn split_headers(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let fields = crate::header::fields(message)
        .filter_map(|f| Some((f.name()?, f.value())))
        .collect();
    (fields, &message[crate::header::body_start(message)..])
}

/// The `h=` list for a message: every configured name as often as the message has it, and
/// `From` once more.
pub fn header_list(fields: &[(&[u8], &[u8])], sign: &[String]) -> Vec<String> {
    let mut h = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for n in std::iter::once("From").chain(sign.iter().map(String::as_str)) {
        if !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            names.push(n);
        }
    }
    for name in names {
        let count = fields
            .iter()
            .filter(|(n, _)| n.trim_ascii_end().eq_ignore_ascii_case(name.as_bytes()))
            .count();
        let times = if name.eq_ignore_ascii_case("From") {
            count + 1
        } else {
            count
        };
        h.extend(std::iter::repeat_n(name.to_string(), times));
    }
    h
}

/// The fields `h` selects, in signing order: for each name, the next instance from the bottom
/// not used yet; a name with no instance left contributes nothing (§5.4.2).
pub fn select<'a>(fields: &[(&'a [u8], &'a [u8])], h: &[String]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut used = vec![false; fields.len()];
    let mut out = Vec::new();
    for name in h {
        let found = (0..fields.len()).rev().find(|&i| {
            !used[i]
                && fields[i]
                    .0
                    .trim_ascii_end()
                    .eq_ignore_ascii_case(name.trim().as_bytes())
        });
        if let Some(i) = found {
            used[i] = true;
            out.push(fields[i]);
        }
    }
    out
}

/// The relaxed body hash (§3.7), unlimited length.
pub fn body_hash(key: &impl SigningKey, body: &[u8]) -> Vec<u8> {
    key.hash(Canonicalization::Relaxed.canonical_body(body, 0))
        .as_ref()
        .to_vec()
}

/// What the signature covers (§3.7): the selected fields, then the DKIM-Signature field with
/// an empty `b=` and without its final CRLF, all relaxed.
struct Signed<'a> {
    fields: Vec<(&'a [u8], &'a [u8])>,
    signature_value: &'a [u8],
}

impl Writable for Signed<'_> {
    fn write(self, w: &mut impl Writer) {
        let c = Canonicalization::Relaxed;
        c.canonicalize_headers(self.fields.into_iter(), w);
        c.canonicalize_headers(
            std::iter::once((&b"DKIM-Signature"[..], self.signature_value)),
            w,
        );
    }
}

/// The `b=` value: the signature over `fields` (already selected) and the DKIM-Signature value
/// whose `b=` is empty.
pub fn signature_bytes(
    key: &impl SigningKey,
    fields: Vec<(&[u8], &[u8])>,
    signature_value: &[u8],
) -> anyhow::Result<Vec<u8>> {
    key.sign(Signed {
        fields,
        signature_value,
    })
    .map_err(|e| anyhow::anyhow!("DKIM signing failed: {e}"))
}

/// Every key's signature for `message`: each key's selector with its field or its error.
pub fn sign_all(
    keys: &[DomainKey],
    domain: &str,
    message: &[u8],
    sign_headers: &[String],
    now: u64,
) -> Vec<(String, anyhow::Result<String>)> {
    keys.iter()
        .map(|k| {
            (
                k.selector.clone(),
                sign(k, domain, message, sign_headers, now),
            )
        })
        .collect()
}

/// A complete `DKIM-Signature:` field (CRLF-terminated) for `message` by `key` for `domain`.
pub fn sign(
    key: &DomainKey,
    domain: &str,
    message: &[u8],
    sign_headers: &[String],
    now: u64,
) -> anyhow::Result<String> {
    match &key.key {
        Key::Ed25519(k) => sign_with(k, &key.selector, domain, message, sign_headers, now),
        Key::Rsa(k) => sign_with(k, &key.selector, domain, message, sign_headers, now),
    }
}

fn sign_with(
    key: &impl SigningKey,
    selector: &str,
    domain: &str,
    message: &[u8],
    sign_headers: &[String],
    now: u64,
) -> anyhow::Result<String> {
    let (fields, body) = split_headers(message);
    let h = header_list(&fields, sign_headers);
    let mut sig = Signature {
        v: 1,
        a: key.algorithm(),
        d: domain.to_ascii_lowercase(),
        s: selector.to_string(),
        h: h.clone(),
        t: now,
        bh: body_hash(key, body),
        ch: Canonicalization::Relaxed,
        cb: Canonicalization::Relaxed,
        ..Signature::default()
    };
    let mut unsigned = Vec::new();
    sig.write(&mut unsigned, true);
    let value = field_value(&unsigned);
    sig.b = signature_bytes(key, select(&fields, &h), value)?;
    let mut out = Vec::new();
    sig.write(&mut out, true);
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("DKIM-Signature is not UTF-8"))
}

/// The value of a `Name: value\r\n` field: after the colon, without the final CRLF.
fn field_value(field: &[u8]) -> &[u8] {
    let start = field.iter().position(|b| *b == b':').map_or(0, |i| i + 1);
    let mut end = field.len();
    while end > start && matches!(field[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    &field[start..end]
}

pub fn algorithm_name(a: SigAlgorithm) -> &'static str {
    match a {
        SigAlgorithm::RsaSha256 => "rsa-sha256",
        SigAlgorithm::RsaSha1 => "rsa-sha1",
        SigAlgorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: A <a@x.test>\r\nTo: b@y.test\r\nSubject: hi\r\n there\r\nX-Other: 1\r\n\r\nbody\r\n";

    #[test]
    fn splits_fields_with_continuations() {
        let (f, body) = split_headers(MSG);
        assert_eq!(f.len(), 4);
        assert_eq!(f[2].0, b"Subject");
        assert_eq!(f[2].1, b" hi\r\n there\r\n");
        assert_eq!(body, b"body\r\n");
    }

    #[test]
    fn header_list_counts_and_oversigns_from() {
        let (f, _) = split_headers(MSG);
        let sign: Vec<String> = ["To", "Cc", "Subject", "from"].map(String::from).to_vec();
        assert_eq!(
            header_list(&f, &sign),
            vec!["From", "From", "To", "Subject"]
        );
        let sel = select(&f, &header_list(&f, &sign));
        assert_eq!(sel.len(), 3, "the extra From selects nothing");
    }
}
