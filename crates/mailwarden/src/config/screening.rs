//! `[screening]`: the MX port's connection-time checks (postscreen's trade) and smart
//! greylisting. Each check has a `mode`; see `crate::screening` for what they do.

use super::Mode;
use super::schema::section;
use super::units::Duration;

section! {
    /// Screening of clients on the MX port, before a message is read: pregreet, protocol
    /// abuse, DNS block and allow lists, reverse DNS, HELO, and greylisting. Verdicts of the
    /// connection and HELO stages are acted on at the first RCPT, so one log line names the
    /// IP, HELO, sender and recipient. In `observe` mode a check logs "would reject" (with
    /// `event="screen"`) and lets the mail through.
    pub struct Screening {
        pub pregreet: Pregreet = Pregreet::default(),
        pub protocol: Protocol = Protocol::default(),
        pub dnsbl: Dnsbl = Dnsbl::default(),
        pub rdns: Rdns = Rdns::default(),
        pub helo: Helo = Helo::default(),
        pub greylist: Greylist = Greylist::default(),
    }
}

section! {
    /// Early talkers (postscreen's greet test): the banner is sent as `220-` first and the
    /// final `220` after `wait`; a client that speaks before the final line gets `554 5.5.1`.
    pub struct Pregreet {
        pub mode: Mode = Mode::Enforce,
        /// How long the banner's first line waits for the rest. `0s` sends it at once.
        pub wait: Duration = Duration::secs(2),
        /// How long an IP that waited stays exempt (kept in the store).
        pub remember: Duration = Duration::secs(7 * 86400),
    }
}

section! {
    /// Protocol abuse: a non-SMTP command (an HTTP request, say) closes the session at once
    /// (`554 5.5.1`); commands pipelined without PIPELINING (after HELO, or before EHLO),
    /// bare LF in commands and a session closed for too many errors are signals. In
    /// `enforce` mode pipelining without PIPELINING is refused at RCPT (`550 5.5.1`), and an
    /// IP closed for errors loses its pregreet exemption.
    pub struct Protocol {
        pub mode: Mode = Mode::Enforce,
    }
}

section! {
    /// DNS block and allow lists (RFC 5782). Lookups for the client IP start at connect,
    /// in parallel; domain lists (RHSBL) are asked for the HELO name and the sender domain.
    /// The weights of the lists that answer add up; at `threshold` or more the client is
    /// refused at RCPT with `554 5.7.1`, naming the lists. A negative weight (an allow list)
    /// can exempt a client, and exempts it from greylisting.
    pub struct Dnsbl {
        pub mode: Mode = Mode::Enforce,
        pub threshold: f64 = 1.0,
        /// IP lists: `[[screening.dnsbl.zones]]` with `zone`, `weight` and optional `codes`.
        pub zones: Vec<ListZone> = Vec::new(),
        /// Domain lists (RHSBL) for the HELO name and the sender domain.
        pub domain_zones: Vec<ListZone> = Vec::new(),
    }
}

section! {
    /// One DNS list.
    pub struct ListZone {
        /// The list's zone, e.g. `zen.spamhaus.org`.
        pub zone: String = String::new(),
        /// Added to the score when the list answers; negative for an allow list.
        pub weight: f64 = 1.0,
        /// Answers that count (`127.0.0.2`, ...). Empty: any answer in 127.0.0.0/8.
        pub codes: Vec<String> = Vec::new(),
    }
}

section! {
    /// Reverse DNS of the client (iprev, RFC 8601 §3). `observe` only scores and records;
    /// `enforce` refuses at RCPT a client without PTR or whose PTR does not resolve back
    /// (`550 5.7.25`), and tempfails on a DNS error (`450 4.7.25`).
    pub struct Rdns {
        pub mode: Mode = Mode::Observe,
    }
}

section! {
    /// HELO/EHLO name checks: syntax, a fully qualified name, not our own name or address,
    /// an address literal that matches the client, and a name that resolves. `enforce`
    /// refuses at RCPT with `550 5.7.1`.
    pub struct Helo {
        pub mode: Mode = Mode::Observe,
    }
}

section! {
    /// Smart greylisting: only clients with weak signals are greylisted. Exempt: an IP whose
    /// /24 (/64) passed before, a client on an allow list, a sender whose SPF passes for the
    /// client and who passed greylisting before, and recipients in `opt_out`. Otherwise the
    /// first attempt of a (network, sender, recipient) triplet gets `451 4.7.1`, and a retry
    /// after `min_delay` and before `expiry` passes. When SPF passes, the sender's domain
    /// stands in for the network, so a provider's rotating pool passes on any of its IPs.
    pub struct Greylist {
        pub mode: Mode = Mode::Observe,
        pub min_delay: Duration = Duration::secs(300),
        pub expiry: Duration = Duration::secs(86400),
        /// How long a network or sender that passed stays exempt.
        pub remember: Duration = Duration::secs(35 * 86400),
        /// Recipients (addresses, or `@domain`) never greylisted.
        pub opt_out: Vec<String> = Vec::new(),
    }
}
