//! SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) decoding for SMTP AUTH
//! (RFC 4954).
//!
//! Security: the password lives in a [`Secret`] whose `Debug` prints nothing and whose memory is
//! overwritten on drop. Nothing in this module logs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use zeroize::Zeroize;

/// A password. Never printed, zeroed when dropped.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug)]
pub struct Credentials {
    /// The login name (authentication identity).
    pub username: String,
    pub password: Secret,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// Not base64, not UTF-8, or the wrong number of fields.
    Malformed,
    /// PLAIN with an authorization identity different from the login (proxy auth is refused).
    AuthzMismatch,
}

/// Decode one client response line. `*` cancels (RFC 4954 §4).
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Malformed)
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
pub fn parse_plain(decoded: Vec<u8>) -> Result<Credentials, SaslError> {
    let mut parts = decoded.splitn(3, |b| *b == 0);
    let authz = parts.next().ok_or(SaslError::Malformed)?;
    let authc = parts.next().ok_or(SaslError::Malformed)?;
    let pass = parts.next().ok_or(SaslError::Malformed)?;
    let username = std::str::from_utf8(authc)
        .map_err(|_| SaslError::Malformed)?
        .to_string();
    if username.is_empty() || pass.is_empty() || pass.contains(&0) {
        return Err(SaslError::Malformed);
    }
    if !authz.is_empty() && authz != authc {
        return Err(SaslError::AuthzMismatch);
    }
    let password = Secret::new(pass.to_vec());
    // `decoded` still holds the password; scrub it before it is freed.
    let mut decoded = decoded;
    decoded.zeroize();
    Ok(Credentials { username, password })
}

pub fn utf8_username(decoded: Vec<u8>) -> Result<String, SaslError> {
    let s = String::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    if s.is_empty() || s.contains('\0') {
        return Err(SaslError::Malformed);
    }
    Ok(s)
}

pub fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        let d = decode_response(b"AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=").unwrap();
        let c = parse_plain(d).unwrap();
        assert_eq!(c.username, "alice@example.test");
        assert_eq!(c.password.expose(), b"secret");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn plain_with_matching_authzid() {
        let c = parse_plain(b"a@x.test\0a@x.test\0pw".to_vec()).unwrap();
        assert_eq!(c.username, "a@x.test");
        assert_eq!(
            parse_plain(b"b@x.test\0a@x.test\0pw".to_vec()).unwrap_err(),
            SaslError::AuthzMismatch
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(decode_response(b"*").unwrap_err(), SaslError::Cancelled);
        assert_eq!(decode_response(b"!!!").unwrap_err(), SaslError::Malformed);
        assert_eq!(
            parse_plain(b"\0user".to_vec()).unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(
            parse_plain(b"\0user\0".to_vec()).unwrap_err(),
            SaslError::Malformed
        );
    }
}
