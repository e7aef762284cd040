//! POP3 command lines (RFC 1939 §3, RFC 2449 §4, RFC 2595 §4, RFC 5034 §4), parsed on bytes.
//!
//! Security: the caller has already cut the line to its limit. Keywords are matched without
//! case; message numbers are decimal digits only and at most nine of them, so no number a
//! client writes overflows. PASS takes the rest of the line (a password may hold spaces) and
//! only ever as a [`Secret`].

use crate::sasl::Secret;

#[derive(Debug)]
pub enum Command {
    Capa,
    User(String),
    Pass(Secret),
    /// `AUTH` alone lists the mechanisms; `initial` is the RFC 5034 initial response.
    Auth {
        mechanism: Option<String>,
        initial: Option<Vec<u8>>,
    },
    Stls,
    Quit,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    Top(u32, u64),
    Uidl(Option<u32>),
    Apop,
}

impl Command {
    /// The keyword, for log lines.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Capa => "CAPA",
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Auth { .. } => "AUTH",
            Command::Stls => "STLS",
            Command::Quit => "QUIT",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Apop => "APOP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    Unrecognized,
    /// A known keyword with arguments it does not take.
    Syntax(&'static str),
    /// An argument that must be text is not UTF-8.
    Encoding(&'static str),
}

/// A message number: 1 to 999999999, decimal digits only.
fn number(arg: &[u8]) -> Option<u32> {
    if arg.is_empty() || arg.len() > 9 || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// A line count for TOP: decimal digits; more than a message can hold is as good as all.
fn count(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(arg)
            .ok()?
            .parse::<u64>()
            .unwrap_or(u64::MAX),
    )
}

/// Parse one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let (kw, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    if kw.len() > 4 || kw.is_empty() {
        return Err(CommandError::Unrecognized);
    }
    let kw = kw.to_ascii_uppercase();
    let args: Vec<&[u8]> = rest
        .split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .collect();
    let none = |c: Command, v: &'static str| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax(v))
        }
    };
    let optional_number = |v: &'static str| match args.as_slice() {
        [] => Ok(None),
        [n] => number(n).map(Some).ok_or(CommandError::Syntax(v)),
        _ => Err(CommandError::Syntax(v)),
    };
    let one_number = |v: &'static str| match args.as_slice() {
        [n] => number(n).ok_or(CommandError::Syntax(v)),
        _ => Err(CommandError::Syntax(v)),
    };
    match kw.as_slice() {
        b"CAPA" => none(Command::Capa, "CAPA"),
        b"STLS" => none(Command::Stls, "STLS"),
        b"QUIT" => none(Command::Quit, "QUIT"),
        b"STAT" => none(Command::Stat, "STAT"),
        b"NOOP" => none(Command::Noop, "NOOP"),
        b"RSET" => none(Command::Rset, "RSET"),
        b"APOP" => Ok(Command::Apop),
        b"LIST" => optional_number("LIST").map(Command::List),
        b"UIDL" => optional_number("UIDL").map(Command::Uidl),
        b"RETR" => one_number("RETR").map(Command::Retr),
        b"DELE" => one_number("DELE").map(Command::Dele),
        b"TOP" => match args.as_slice() {
            [n, l] => match (number(n), count(l)) {
                (Some(n), Some(l)) => Ok(Command::Top(n, l)),
                _ => Err(CommandError::Syntax("TOP")),
            },
            _ => Err(CommandError::Syntax("TOP")),
        },
        b"USER" => match args.as_slice() {
            [u] => std::str::from_utf8(u)
                .map(|u| Command::User(u.to_string()))
                .map_err(|_| CommandError::Encoding("USER")),
            _ => Err(CommandError::Syntax("USER")),
        },
        b"PASS" => {
            if rest.is_empty() {
                Err(CommandError::Syntax("PASS"))
            } else {
                Ok(Command::Pass(Secret::new(rest.to_vec())))
            }
        }
        b"AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] | [m, _] => {
                let m = std::str::from_utf8(m)
                    .map_err(|_| CommandError::Encoding("AUTH"))?
                    .to_ascii_uppercase();
                Ok(Command::Auth {
                    mechanism: Some(m),
                    initial: args.get(1).map(|r| r.to_vec()),
                })
            }
            _ => Err(CommandError::Syntax("AUTH")),
        },
        _ => Err(CommandError::Unrecognized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_arguments() {
        assert!(matches!(parse(b"capa"), Ok(Command::Capa)));
        assert!(matches!(parse(b"LIST"), Ok(Command::List(None))));
        assert!(matches!(parse(b"list 3"), Ok(Command::List(Some(3)))));
        assert!(matches!(parse(b"TOP 2 0"), Ok(Command::Top(2, 0))));
        assert!(matches!(
            parse(b"TOP 2 99999999999999999999999"),
            Ok(Command::Top(2, u64::MAX))
        ));
        assert!(
            matches!(parse(b"USER alice@example.test"), Ok(Command::User(u)) if u == "alice@example.test")
        );
        match parse(b"PASS two words") {
            Ok(Command::Pass(p)) => assert_eq!(p.expose(), b"two words"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(b"AUTH plain AGEAYg=="),
            Ok(Command::Auth { mechanism: Some(m), initial: Some(_) }) if m == "PLAIN"
        ));
    }

    #[test]
    fn bad_lines() {
        assert_eq!(parse(b"").unwrap_err(), CommandError::Unrecognized);
        assert_eq!(parse(b"HELOX").unwrap_err(), CommandError::Unrecognized);
        assert_eq!(parse(b"RETR").unwrap_err(), CommandError::Syntax("RETR"));
        assert_eq!(parse(b"RETR -1").unwrap_err(), CommandError::Syntax("RETR"));
        assert_eq!(
            parse(b"RETR 1234567890").unwrap_err(),
            CommandError::Syntax("RETR")
        );
        assert_eq!(parse(b"STAT 1").unwrap_err(), CommandError::Syntax("STAT"));
        assert_eq!(
            parse(b"LIST 1 2").unwrap_err(),
            CommandError::Syntax("LIST")
        );
        assert_eq!(
            parse(b"USER \xff").unwrap_err(),
            CommandError::Encoding("USER")
        );
        assert_eq!(parse(b"PASS").unwrap_err(), CommandError::Syntax("PASS"));
    }
}
