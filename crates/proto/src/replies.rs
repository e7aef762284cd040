//! Every reply text a client can see, in one place (RFC 5321 §4.2.2 codes, RFC 3463 enhanced
//! codes). Texts are deliberately generic; the reason for a reject goes to the log.

use crate::reply::{Reply, Status};

macro_rules! replies {
    ($($(#[$m:meta])* $name:ident = $code:literal ($a:literal, $b:literal, $c:literal) $text:literal;)*) => {
        $( $(#[$m])* pub const $name: Reply = Reply::new($code, Status($a, $b, $c), $text); )*
    };
}

replies! {
    OK = 250 (2, 0, 0) "OK";
    MAIL_OK = 250 (2, 1, 0) "Sender OK";
    RCPT_OK = 250 (2, 1, 5) "Recipient OK";
    RESET = 250 (2, 0, 0) "Reset";
    BYE = 221 (2, 0, 0) "Bye";
    HELP = 214 (2, 0, 0) "See RFC 5321; mailwarden does not reveal more";
    /// VRFY reveals nothing (RFC 5321 §3.5.3 allows 252).
    VRFY = 252 (2, 5, 0) "Cannot verify; send mail and delivery will be attempted";
    EXPN = 502 (5, 5, 1) "EXPN not available";
    START_DATA = 354 (2, 0, 0) "End data with <CR><LF>.<CR><LF>";
    START_TLS = 220 (2, 0, 0) "Ready to start TLS";
    AUTH_OK = 235 (2, 7, 0) "Authentication successful";

    UNRECOGNIZED = 500 (5, 5, 2) "Command unrecognized";
    NON_SMTP = 500 (5, 5, 1) "Not an SMTP command";
    /// Screening: a non-SMTP command closes the session.
    NON_SMTP_CLOSE = 554 (5, 5, 1) "Not an SMTP command; closing";
    /// Screening: the client spoke before the greeting ended (pregreet).
    EARLY_TALKER = 554 (5, 5, 1) "Protocol error: you talked before the greeting";
    /// Screening: commands pipelined although PIPELINING was not offered (RFC 2920 §3.1).
    PIPELINING_REJECTED = 550 (5, 5, 1) "Protocol error: commands sent without waiting for replies";
    /// Screening: the client's PTR is missing or does not resolve back (RFC 7372 X.7.25).
    RDNS_REJECTED = 550 (5, 7, 25) "Reverse DNS validation failed for your address";
    RDNS_TEMP = 450 (4, 7, 25) "Temporary failure checking your reverse DNS, try again later";
    /// Content scoring reached `scoring.reject`.
    SPAM_REJECTED = 550 (5, 7, 1) "Message refused: its content scores as spam";
    /// Screening: smart greylisting, first attempt.
    GREYLISTED = 451 (4, 7, 1) "Greylisted, please try again later";
    LINE_TOO_LONG = 500 (5, 5, 2) "Line too long";
    BAD_ENCODING = 500 (5, 5, 2) "Command is not valid UTF-8";
    SYNTAX = 501 (5, 5, 4) "Syntax error in parameters or arguments";
    BAD_SENDER = 501 (5, 1, 7) "Bad sender address syntax";
    BAD_RECIPIENT = 501 (5, 1, 3) "Bad recipient address syntax";
    NEEDS_SMTPUTF8 = 553 (5, 6, 7) "Non-ASCII address requires SMTPUTF8";
    UNSUPPORTED_PARAM = 555 (5, 5, 4) "Unsupported parameter";

    NEED_HELO = 503 (5, 5, 1) "Send HELO or EHLO first";
    NEED_MAIL = 503 (5, 5, 1) "Need MAIL command";
    NESTED_MAIL = 503 (5, 5, 1) "Sender already specified";
    NEED_RCPT = 503 (5, 5, 1) "Need RCPT command";
    NO_VALID_RCPT = 554 (5, 5, 1) "No valid recipients";
    BDAT_THEN_DATA = 503 (5, 5, 1) "DATA not allowed after BDAT";

    TOO_MANY_RCPTS = 452 (4, 5, 3) "Too many recipients";
    SIZE_EXCEEDED = 552 (5, 3, 4) "Message size exceeds fixed limit";
    BARE_LINE_ENDING = 554 (5, 5, 2) "Bare CR or LF in message; use CRLF line endings";
    LONG_LINE = 554 (5, 6, 0) "Message has a line longer than 998 characters";

    TLS_ACTIVE = 503 (5, 5, 1) "TLS already active";
    TLS_UNAVAILABLE = 454 (4, 7, 0) "TLS not available";
    TLS_IN_TXN = 503 (5, 5, 1) "STARTTLS not allowed inside a transaction";

    /// RFC 4954 §4: AUTH over an unencrypted channel.
    AUTH_NEEDS_TLS = 538 (5, 7, 11) "Encryption required for requested authentication mechanism";
    AUTH_NOT_OFFERED = 503 (5, 5, 1) "AUTH not available on this port";
    AUTH_ALREADY = 503 (5, 5, 1) "Already authenticated";
    AUTH_IN_TXN = 503 (5, 5, 1) "AUTH not allowed inside a transaction";
    AUTH_MECHANISM = 504 (5, 5, 4) "Unrecognized authentication mechanism";
    AUTH_CANCELLED = 501 (5, 7, 0) "Authentication cancelled";
    AUTH_MALFORMED = 501 (5, 5, 2) "Cannot decode authentication response";
    AUTH_FAILED = 535 (5, 7, 8) "Authentication credentials invalid";
    AUTH_TEMP = 454 (4, 7, 0) "Temporary authentication failure";
    AUTH_REQUIRED = 530 (5, 7, 0) "Authentication required";

    RELAY_DENIED = 554 (5, 7, 1) "Relay access denied";
    NO_SUCH_USER = 550 (5, 1, 1) "Mailbox unavailable";
    LITERAL_REFUSED = 553 (5, 1, 3) "Address literals are not accepted here";
    /// Too many failed logins from the client's address or network.
    AUTH_BLOCKED = 454 (4, 7, 0) "Too many failed logins from your network, try again later";
    /// The line of login attempts (from this network, or for the password verifiers) is
    /// full.
    AUTH_BUSY = 454 (4, 7, 0) "Too many login attempts waiting, try again later";
    /// Submission from an account suspended during the session.
    ACCOUNT_SUSPENDED = 550 (5, 7, 1) "Your account is suspended and cannot send; contact your administrator";

    /// DMARC could not be evaluated because of a temporary DNS error: fail closed.
    AUTH_DNS_TEMP = 451 (4, 7, 0) "Temporary failure checking the sender's DMARC policy, try again later";
    /// Mail from outside using one of our own domains, with nothing to vouch for it.
    LOCAL_SENDER_FORGED = 550 (5, 7, 1) "Sender address uses a local domain; mail from outside may not";
    /// RFC 7372: X.7.24 SPF validation error.
    SPF_TEMP = 451 (4, 7, 24) "Temporary SPF validation error, try again later";

    LOCAL_ERROR = 451 (4, 3, 0) "Temporary local problem, please try again later";
    /// The header section is larger, or has more fields, than `[limits]` allows.
    HEADER_TOO_LARGE = 554 (5, 6, 0) "Message header too large or has too many fields";
    /// MIME nested deeper than `limits.max_mime_depth`.
    MIME_TOO_DEEP = 554 (5, 6, 0) "Message structure nested too deeply";
    /// RFC 5321 §6.3: more `Received` fields than `limits.max_received`.
    TOO_MANY_HOPS = 554 (5, 4, 6) "Too many hops, possible mail loop";
    NO_STORAGE = 452 (4, 3, 1) "Insufficient system storage";

    TOO_MANY_ERRORS = 421 (4, 7, 0) "Too many errors, closing connection";
    TOO_MANY_COMMANDS = 421 (4, 7, 0) "Too many commands, closing connection";
    TOO_MANY_MESSAGES = 421 (4, 7, 0) "Too many messages in one session, please reconnect";
    TOO_MANY_AUTH_FAILURES = 421 (4, 7, 0) "Too many failed authentications, closing connection";
    TIMEOUT = 421 (4, 4, 2) "Timeout, closing connection";
    SESSION_TOO_LONG = 421 (4, 4, 2) "Session time limit reached, closing connection";
    TOO_MANY_CONNECTIONS = 421 (4, 7, 0) "Too many connections, try again later";
    SHUTTING_DOWN = 421 (4, 3, 2) "Service shutting down";
    /// The session hit a bug; it ends, nothing it held is kept.
    INTERNAL_ERROR = 421 (4, 3, 0) "Internal error, closing connection";
}

/// `220 host ESMTP mailwarden`. No version: it only helps attackers.
pub fn greeting(hostname: &str) -> Reply {
    Reply::owned(220, None, format!("{hostname} ESMTP mailwarden"))
}

/// The first line of a pregreet banner; the final `220` follows after the wait.
pub fn greeting_first(hostname: &str) -> String {
    format!("220-{hostname} ESMTP mailwarden\r\n")
}

/// Screening: `550 5.7.1` for a HELO name that breaks a rule; `why` is ours.
pub fn helo_rejected(why: &str) -> Reply {
    Reply::owned(
        550,
        Some(Status(5, 7, 1)),
        format!("HELO/EHLO refused: {why}"),
    )
}

/// Screening: `554 5.7.1` naming the DNS lists that list the client (their zones are
/// configuration, the address is the client's own: both safe to echo).
pub fn dnsbl_rejected(ip: &str, lists: &[&str]) -> Reply {
    Reply::owned(
        554,
        Some(Status(5, 7, 1)),
        format!(
            "Service unavailable; client [{ip}] listed by {}",
            lists.join(", ")
        ),
    )
}

pub fn helo(hostname: &str) -> Reply {
    Reply::owned(250, None, hostname.to_string())
}

pub fn queued(queue_id: &str) -> Reply {
    Reply::owned(
        250,
        Some(Status(2, 0, 0)),
        format!("OK queued as {queue_id}"),
    )
}

pub fn chunk_received(size: u64) -> Reply {
    Reply::owned(
        250,
        Some(Status(2, 0, 0)),
        format!("{size} octets received"),
    )
}

/// Keep a domain taken from the message to a harmless alphabet before echoing it.
fn domain_text(d: &str) -> String {
    let clean: String = d
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .take(255)
        .collect();
    if clean.is_empty() {
        "the sender's domain".to_string()
    } else {
        clean
    }
}

/// `550 5.7.1`: the From domain's DMARC policy says reject.
pub fn dmarc_reject(domain: &str) -> Reply {
    Reply::owned(
        550,
        Some(Status(5, 7, 1)),
        format!("Rejected by the DMARC policy of {}", domain_text(domain)),
    )
}

/// `550 5.7.23` (RFC 7372): SPF says this client may not send for the domain.
pub fn spf_reject(domain: &str) -> Reply {
    Reply::owned(
        550,
        Some(Status(5, 7, 23)),
        format!("SPF validation failed for {}", domain_text(domain)),
    )
}

/// `451 4.7.1`: an account's sending limit is reached; `why` (ours, not the client's words)
/// says which limit, so the user knows how long to wait.
pub fn rate_limited(why: &str) -> Reply {
    Reply::owned(
        451,
        Some(Status(4, 7, 1)),
        format!("Sending limit reached: {why}; try again later"),
    )
}

/// `550 5.7.1`: the authenticated user may not send as this address (envelope sender, or the
/// `From:`/`Sender:` header). The address is echoed in a harmless alphabet.
pub fn sender_not_owned(what: &str, address: &str) -> Reply {
    let clean: String = address
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "@.-_+".contains(*c))
        .take(254)
        .collect();
    Reply::owned(
        550,
        Some(Status(5, 7, 1)),
        format!(
            "{what} <{clean}> is not one of your addresses; ask your administrator for an alias"
        ),
    )
}

/// `550 5.7.1`: submitted mail must name its author with an address (RFC 5322 §3.6.2).
pub fn sender_header_missing() -> Reply {
    Reply::owned(
        550,
        Some(Status(5, 7, 1)),
        "The message needs a From: header with one of your addresses".to_string(),
    )
}

pub fn auth_challenge(text: &str) -> Reply {
    Reply::owned(334, None, text.to_string())
}
