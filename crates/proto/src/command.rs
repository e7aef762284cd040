//! SMTP command-line parser (RFC 5321 §4.1; RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531
//! SMTPUTF8, RFC 3030 CHUNKING, RFC 3207 STARTTLS, RFC 4954 AUTH).
//!
//! Takes one line without its CRLF and returns a typed [`Command`] or a [`CommandError`] that
//! maps to a reply. Verbs are case-insensitive; everything else is strict.

use crate::address::{self, AddressError, ForwardPath, ReversePath};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// AUTH= (RFC 4954 §5): accepted and recorded, never trusted.
    pub auth: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Helo(_) => Verb::Helo,
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Help => Verb::Help,
            Command::Vrfy => Verb::Vrfy,
            Command::Expn => Verb::Expn,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
        }
    }
}

/// The verb a reply answers; used in logs and decision records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Connect,
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    StartTls,
    Auth,
    Unknown,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Connect => "CONNECT",
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Help => "HELP",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
            Verb::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Not an SMTP verb we know.
    Unrecognized,
    /// Looks like another protocol (an HTTP request line, for instance).
    NonSmtp,
    /// Known verb, bad arguments.
    Syntax(Verb),
    BadSender(AddressError),
    BadRecipient(AddressError),
    /// MAIL/RCPT parameter we do not support.
    UnsupportedParam(Verb),
    /// Not valid UTF-8 where text is expected.
    Encoding,
}

/// Parse one command line (CRLF already removed).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Encoding)?;
    if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(CommandError::Unrecognized);
    }
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let v = verb.to_ascii_uppercase();
    let no_arg = |c: Command, verb: Verb| {
        if arg.trim().is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax(verb))
        }
    };
    match v.as_str() {
        "HELO" => domain_arg(arg, Verb::Helo).map(Command::Helo),
        "EHLO" => domain_arg(arg, Verb::Ehlo).map(Command::Ehlo),
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg(Command::Data, Verb::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_arg(Command::Rset, Verb::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(Command::Quit, Verb::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_arg(Command::StartTls, Verb::StartTls),
        "AUTH" => parse_auth(arg),
        "GET" | "POST" | "HEAD" | "PUT" | "CONNECT" | "OPTIONS" | "DELETE" | "USER" | "PASS" => {
            Err(CommandError::NonSmtp)
        }
        _ if v.ends_with(':') && v.len() > 1 => Err(CommandError::NonSmtp), // "Host:", "User-Agent:"
        _ => Err(CommandError::Unrecognized),
    }
}

fn domain_arg(arg: &str, verb: Verb) -> Result<String, CommandError> {
    let a = arg.trim_matches(' ');
    // HELO names are recorded as given and judged by the screening checks; only refuse what
    // cannot be a name at all.
    if a.is_empty() || a.contains(' ') || a.len() > address::MAX_DOMAIN {
        return Err(CommandError::Syntax(verb));
    }
    Ok(a.to_string())
}

/// `arg` without its leading keyword `kw` (ASCII, matched case-insensitively). Works on bytes:
/// a client may put a multi-byte character where the keyword ends (`MAIL FRO€:`), and `get`
/// refuses to cut inside it instead of panicking.
fn keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    let head = arg.as_bytes().get(..kw.len())?;
    if head.eq_ignore_ascii_case(kw.as_bytes()) {
        arg.get(kw.len()..)
    } else {
        None
    }
}

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let rest = keyword(arg, "FROM:").ok_or(CommandError::Syntax(Verb::Mail))?;
    let (path, params) = address::split_path(rest).map_err(CommandError::BadSender)?;
    let mut p = MailParams::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = match param.find('=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        match (k.to_ascii_uppercase().as_str(), v) {
            ("SIZE", Some(v))
                if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                p.size = Some(v.parse().map_err(|_| CommandError::Syntax(Verb::Mail))?);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = Some(Body::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                p.body = Some(Body::EightBitMime)
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("AUTH", Some(v)) if !v.is_empty() => p.auth = Some(v.to_string()),
            ("SIZE" | "BODY" | "AUTH", _) => return Err(CommandError::Syntax(Verb::Mail)),
            _ => return Err(CommandError::UnsupportedParam(Verb::Mail)),
        }
    }
    let from = address::parse_reverse_path(path, p.smtputf8).map_err(CommandError::BadSender)?;
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let rest = keyword(arg, "TO:").ok_or(CommandError::Syntax(Verb::Rcpt))?;
    let (path, params) = address::split_path(rest).map_err(CommandError::BadRecipient)?;
    if !params.trim().is_empty() {
        return Err(CommandError::UnsupportedParam(Verb::Rcpt));
    }
    // UTF-8 is checked against the transaction's SMTPUTF8 flag by the session.
    let to = address::parse_forward_path(path, true).map_err(CommandError::BadRecipient)?;
    Ok(Command::Rcpt { to })
}

fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut it = arg.split(' ').filter(|s| !s.is_empty());
    let size = it
        .next()
        .filter(|s| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError::Syntax(Verb::Bdat))?;
    let last = match it.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax(Verb::Bdat)),
    };
    if it.next().is_some() {
        return Err(CommandError::Syntax(Verb::Bdat));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    let mut it = arg.split(' ').filter(|s| !s.is_empty());
    let mechanism = it
        .next()
        .ok_or(CommandError::Syntax(Verb::Auth))?
        .to_ascii_uppercase();
    let initial = it.next().map(str::to_string);
    if it.next().is_some() {
        return Err(CommandError::Syntax(Verb::Auth));
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Domain, Mailbox};

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(s.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            p("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(p("QuIt"), Ok(Command::Quit));
    }

    #[test]
    fn mail_with_params() {
        let c = p("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8").unwrap();
        let Command::Mail { from, params } = c else {
            panic!()
        };
        assert_eq!(
            from,
            ReversePath::Mailbox(Mailbox {
                local: "a".into(),
                domain: Domain::Name("b.test".into())
            })
        );
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8);
    }

    #[test]
    fn mail_tolerates_space_after_colon() {
        assert!(matches!(
            p("MAIL FROM: <>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                ..
            })
        ));
    }

    #[test]
    fn unknown_param_is_unsupported() {
        assert_eq!(
            p("MAIL FROM:<a@b.test> RET=FULL"),
            Err(CommandError::UnsupportedParam(Verb::Mail))
        );
        assert_eq!(
            p("RCPT TO:<a@b.test> NOTIFY=NEVER"),
            Err(CommandError::UnsupportedParam(Verb::Rcpt))
        );
        assert_eq!(
            p("MAIL FROM:<a@b.test> SIZE=x"),
            Err(CommandError::Syntax(Verb::Mail))
        );
    }

    #[test]
    fn bdat() {
        assert_eq!(
            p("BDAT 10 LAST"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert_eq!(
            p("BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(p("BDAT -1"), Err(CommandError::Syntax(Verb::Bdat)));
        assert_eq!(p("BDAT 1 FIRST"), Err(CommandError::Syntax(Verb::Bdat)));
    }

    #[test]
    fn http_is_non_smtp() {
        assert_eq!(p("GET / HTTP/1.1"), Err(CommandError::NonSmtp));
        assert_eq!(p("Host: example.test"), Err(CommandError::NonSmtp));
    }

    #[test]
    fn data_takes_no_argument() {
        assert_eq!(p("DATA x"), Err(CommandError::Syntax(Verb::Data)));
    }

    #[test]
    fn control_chars_and_bad_utf8() {
        assert_eq!(p("NOOP \0"), Err(CommandError::Unrecognized));
        assert_eq!(parse(b"NOOP \xff"), Err(CommandError::Encoding));
    }

    #[test]
    fn a_multibyte_character_where_a_keyword_ends_is_a_syntax_error() {
        assert_eq!(p("MAIL FRO€:<a@b>"), Err(CommandError::Syntax(Verb::Mail)));
        assert_eq!(p("RCPT T€:<a@b>"), Err(CommandError::Syntax(Verb::Rcpt)));
        assert_eq!(p("RCPT €"), Err(CommandError::Syntax(Verb::Rcpt)));
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(p("AUTH"), Err(CommandError::Syntax(Verb::Auth)));
    }
}
