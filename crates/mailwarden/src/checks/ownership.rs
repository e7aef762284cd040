//! Sender ownership on submission: an authenticated account may use as envelope sender (MAIL
//! FROM), header `From:` and header `Sender:` only addresses it owns: its own, its aliases, and
//! any address of a domain granted to it (`mailwarden user alias add ACCOUNT ADDRESS|@DOMAIN`).
//! Postfix and Stalwart check only the envelope; a forged `From:` is what a reader sees, so the
//! header is checked too (RFC 5322 §3.6.2). The null sender `<>` is allowed in the envelope
//! (RFC 8098 read receipts need it); its `From:` is still checked.

use crate::accounts::Accounts;
use crate::decision::{Finding, Kind};
use mail_parser::{HeaderName, HeaderValue, MessageParser};
use mailwarden_proto::replies;

fn not_owned(kind: Kind, what: &str, address: &str, account: &str) -> Finding {
    Finding::refusing(
        kind,
        format!("{what} <{address}> is not an address of {account}"),
        replies::sender_not_owned(what, address),
    )
}

fn unavailable(e: impl std::fmt::Display) -> Finding {
    Finding::refusing(
        Kind::OwnershipUnavailable,
        format!("store unavailable: {e}"),
        replies::LOCAL_ERROR,
    )
}

/// A `From:`/`Sender:` field that names no address.
fn no_address(detail: String) -> Finding {
    Finding::refusing(
        Kind::HeaderNotOwned,
        detail,
        replies::sender_header_missing(),
    )
}

/// The envelope sender, at MAIL FROM.
pub fn envelope(accounts: &Accounts, account: &str, mail_from: &str) -> Result<(), Finding> {
    if mail_from.is_empty() {
        return Ok(());
    }
    match accounts.may_send_as(account, mail_from) {
        Ok(true) => Ok(()),
        Ok(false) => Err(not_owned(
            Kind::SenderNotOwned,
            "envelope sender",
            mail_from,
            account,
        )),
        Err(e) => Err(unavailable(e)),
    }
}

/// Every `From:` and `Sender:` address of the message header. Returns the domain of the first
/// `From:` address (the DKIM signing domain), so the header is parsed once.
pub fn header(accounts: &Accounts, account: &str, raw: &[u8]) -> Result<String, Finding> {
    let Some(msg) = MessageParser::new().parse_headers(raw) else {
        return Err(no_address("no parseable header".into()));
    };
    let mut from_domain = None;
    for h in msg.headers() {
        let what = match h.name {
            HeaderName::From => "From:",
            HeaderName::Sender => "Sender:",
            _ => continue,
        };
        let addresses: Vec<Option<&str>> = match &h.value {
            HeaderValue::Address(a) => a.iter().map(|x| x.address()).collect(),
            _ => vec![None],
        };
        if addresses.is_empty() {
            return Err(no_address(format!("{what} holds no address")));
        }
        for a in addresses {
            let Some(a) = a.filter(|a| a.contains('@')) else {
                return Err(no_address(format!(
                    "{what} holds a name without an address"
                )));
            };
            match accounts.may_send_as(account, a) {
                Ok(true) => {
                    if h.name == HeaderName::From && from_domain.is_none() {
                        from_domain = a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
                    }
                }
                Ok(false) => return Err(not_owned(Kind::HeaderNotOwned, what, a, account)),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
    from_domain.ok_or_else(|| no_address("no From: header".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounts::new(Store::open(dir.path()).unwrap());
        a.add("alice@example.test", b"pw").unwrap();
        a.add("bob@example.test", b"pw").unwrap();
        (dir, a)
    }

    #[test]
    fn own_address_aliases_and_domains() {
        let (_d, a) = accounts();
        let me = "alice@example.test";
        assert!(envelope(&a, me, "Alice@Example.test").is_ok());
        assert!(envelope(&a, me, "").is_ok());
        assert!(envelope(&a, me, "bob@example.test").is_err());
        a.alias_add(me, "sales@example.test").unwrap();
        assert!(envelope(&a, me, "sales@example.test").is_ok());
        assert!(envelope(&a, "bob@example.test", "sales@example.test").is_err());
        a.alias_add(me, "@brand.test").unwrap();
        assert!(envelope(&a, me, "anyone@brand.test").is_ok());
        assert!(envelope(&a, me, "anyone@sub.brand.test").is_err());
        a.alias_remove(me, "@brand.test").unwrap();
        assert!(envelope(&a, me, "anyone@brand.test").is_err());
        assert_eq!(a.aliases(me).unwrap(), vec!["sales@example.test"]);
    }

    #[test]
    fn header_from_and_sender_are_checked() {
        let (_d, a) = accounts();
        let me = "alice@example.test";
        let ok = b"From: Alice <alice@example.test>\r\nSubject: x\r\n\r\nbody\r\n";
        assert_eq!(header(&a, me, ok).ok().as_deref(), Some("example.test"));
        let forged = b"From: Bob <bob@example.test>\r\nSubject: x\r\n\r\nbody\r\n";
        let r = header(&a, me, forged).unwrap_err();
        assert_eq!(r.refusal.map(|r| r.code), Some(550));
        assert!(r.detail.contains("bob@example.test"), "{}", r.detail);
        let sender = b"From: alice@example.test\r\nSender: bob@example.test\r\n\r\nx\r\n";
        assert!(header(&a, me, sender).is_err());
        let two = b"From: alice@example.test, bob@example.test\r\n\r\nx\r\n";
        assert!(header(&a, me, two).is_err());
        let name_only = b"From: \"Yessenia Lakeshia\"\r\n\r\nx\r\n";
        assert!(header(&a, me, name_only).is_err());
        let none = b"Subject: no from\r\n\r\nx\r\n";
        assert!(header(&a, me, none).is_err());
        let twice = b"From: alice@example.test\r\nFrom: bob@example.test\r\n\r\nx\r\n";
        assert!(header(&a, me, twice).is_err());
    }
}
