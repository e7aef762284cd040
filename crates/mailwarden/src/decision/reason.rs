//! The one reason vocabulary: every finding of every policy is a [`Kind`] with a stable code
//! (its text never changes once released: records, `log search --reason`, metrics labels and
//! log lines all use it), and a [`Finding`] carries it with a detail for people, a score and
//! the refusal it asks for when its policy enforces.

use crate::config::{Config, Mode};
use mailwarden_proto::command::Verb;
use mailwarden_proto::{Reply, Why};
use std::borrow::Cow;

/// Why a finding was made. Grouped by the policy that makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    // Sender authentication (RFC 7208, 6376, 8617, 7489, 8601).
    SpfPass,
    SpfFail,
    SpfSoftFail,
    SpfNeutral,
    SpfNone,
    SpfTempError,
    SpfPermError,
    DkimPass,
    DkimFail,
    DkimNone,
    DkimTempError,
    DkimPermError,
    /// A signature that verified but uses rsa-sha1 or a short key (RFC 8301): not a pass.
    DkimWeak,
    /// Signatures past `dkim.max_signatures` that were not verified.
    DkimCapped,
    DmarcPass,
    DmarcFail,
    DmarcNone,
    DmarcTempError,
    DmarcPermError,
    ArcPass,
    ArcFail,
    ArcNone,
    /// A DMARC failure overridden by a valid ARC chain from a trusted sealer.
    ArcOverride,
    IprevPass,
    IprevFail,
    IprevTempError,
    IprevNone,
    /// An incoming Authentication-Results header claimed our authserv-id and was removed.
    ForgedAuthResults,
    /// Mail from outside claiming one of our domains, with nothing to vouch for it.
    LocalSenderForged,
    /// Mail from outside claiming one of our domains, vouched for (DKIM, ARC, a relay).
    LocalSenderVouched,
    /// Whether it is vouched for cannot be told now (a DKIM key or the store failed).
    LocalSenderTempError,

    // Screening at the door (the MX port).
    EarlyTalker,
    NonSmtpCommand,
    UnauthorizedPipelining,
    BareLfCommand,
    TooManyErrors,
    /// An IP block list answered.
    DnsblListed,
    /// An allow list (negative weight) answered.
    DnswlListed,
    /// A domain block list answered for the HELO name or the sender domain.
    RhsblListed,
    /// The DNS lists' weights reached the threshold.
    DnsblScore,
    NoPtr,
    PtrNotConfirmed,
    PtrTempError,
    HeloSyntax,
    HeloNotFqdn,
    HeloIsOurs,
    HeloLiteralMismatch,
    HeloUnresolvable,
    Greylisted,
    /// Greylisting could not read or write its memory: a tempfail, never a pass.
    GreylistUnavailable,

    // Header heuristics (content scoring).
    FromMissing,
    FromNoAddress,
    DisplayNameAddress,
    ToMissing,
    ToEmpty,
    DateMissing,
    DateInvalid,
    DateFuture,
    DatePast,
    MessageIdMissing,
    MessageIdMalformed,
    MessageIdNotFqdn,
    ReplyToElsewhere,
    DuplicateHeader,
    ForgedReceived,
    // Content.
    IpUrl,
    LinkMismatch,
    UriblListed,
    ClassifierSpam,
    ClassifierHam,
    /// The content score reached `scoring.reject` (logged; the record names the findings
    /// the score counted).
    SpamScore,

    // Sender reputation, from our own history (`reputation`).
    /// An identity whose mail we mostly junked, held or refused, or users marked as spam.
    ReputationBad,
    /// An authenticated identity whose mail was accepted and not marked as spam.
    ReputationGood,
    /// An authenticated sender our users have written to.
    Correspondent,
    /// An authenticated reply to a message one of our users sent.
    ReplyToOurs,

    // The message's shape, before anything parses it.
    HeaderSize,
    HeaderFields,
    TooManyHops,
    MimeDepth,

    // Relay and routing, at RCPT.
    NoSuchUser,
    RelayDenied,
    RcptAddressLiteral,
    RelayAddressLiteral,
    RoutingUnavailable,

    // The submission ports: ownership, limits, containment, AUTH.
    /// MAIL FROM is not one of the account's addresses.
    SenderNotOwned,
    /// `From:`/`Sender:` is not one of the account's addresses (or names none).
    HeaderNotOwned,
    /// Ownership could not be checked (the store failed): refused for now.
    OwnershipUnavailable,
    /// The account's message limits (per hour, per day, per sender domain).
    MessageLimit,
    /// The account's recipient limits.
    RecipientLimit,
    Suspended,
    /// The account's state could not be read: never assumed to be good.
    AccountStateUnavailable,
    AuthBlocked,
    AuthLineFull,
    AuthVerifiersBusy,
    AuthBackendError,
    AuthInvalid,
    AuthSuspended,
    AuthSuspendedAtLogin,
    /// The sender was let in without AUTH by a POP3 login from its IP (`[pop_before_smtp]`).
    AuthPopBeforeSmtp,

    // The server could not take the message (all `451 4.3.0`).
    SpoolWriteFailed,
    SpoolReadFailed,
    SpoolRewriteFailed,
    MemoryExhausted,
    ChecksFailed,
    QuarantineFailed,
    QueueFailed,
    NoTransaction,
    SessionPanic,

    /// A refusal of the protocol core itself (syntax, sequence, protocol limits).
    Protocol(Verb, Why),
}

/// The config key whose `mode` governs a finding's refusal. Findings of no policy
/// (protocol, relay, ownership, limits, local errors) always enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    Spf,
    Dkim,
    Arc,
    Dmarc,
    Iprev,
    LocalForgery,
    Scoring,
    Pregreet,
    Protocol,
    Dnsbl,
    Rdns,
    Helo,
    Greylist,
}

impl Policy {
    /// The name metrics and logs give the check (`mailwarden_screen_total{check=…}`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Spf => "spf",
            Policy::Dkim => "dkim",
            Policy::Arc => "arc",
            Policy::Dmarc => "dmarc",
            Policy::Iprev => "iprev",
            Policy::LocalForgery => "local_forgery",
            Policy::Scoring => "scoring",
            Policy::Pregreet => "pregreet",
            Policy::Protocol => "protocol",
            Policy::Dnsbl => "dnsbl",
            Policy::Rdns => "rdns",
            Policy::Helo => "helo",
            Policy::Greylist => "greylist",
        }
    }

    pub fn mode(self, cfg: &Config) -> Mode {
        let s = &cfg.screening;
        match self {
            Policy::Spf => cfg.spf.mode,
            Policy::Dkim => cfg.dkim.mode,
            Policy::Arc => cfg.arc.mode,
            Policy::Dmarc => cfg.dmarc.mode,
            Policy::Iprev => cfg.iprev.mode,
            Policy::LocalForgery => cfg.mx.local_forgery,
            Policy::Scoring => cfg.scoring.mode,
            Policy::Pregreet => s.pregreet.mode,
            Policy::Protocol => s.protocol.mode,
            Policy::Dnsbl => s.dnsbl.mode,
            Policy::Rdns => s.rdns.mode,
            Policy::Helo => s.helo.mode,
            Policy::Greylist => s.greylist.mode,
        }
    }
}

impl Kind {
    /// The stable code. Every one but the protocol core's is fixed text; those are
    /// `<verb>.<slug>` of two typed values.
    pub fn code(self) -> Cow<'static, str> {
        use Kind::*;
        Cow::Borrowed(match self {
            SpfPass => "spf.pass",
            SpfFail => "spf.fail",
            SpfSoftFail => "spf.softfail",
            SpfNeutral => "spf.neutral",
            SpfNone => "spf.none",
            SpfTempError => "spf.temperror",
            SpfPermError => "spf.permerror",
            DkimPass => "dkim.pass",
            DkimFail => "dkim.fail",
            DkimNone => "dkim.none",
            DkimTempError => "dkim.temperror",
            DkimPermError => "dkim.permerror",
            DkimWeak => "dkim.weak",
            DkimCapped => "dkim.capped",
            DmarcPass => "dmarc.pass",
            DmarcFail => "dmarc.fail",
            DmarcNone => "dmarc.none",
            DmarcTempError => "dmarc.temperror",
            DmarcPermError => "dmarc.permerror",
            ArcPass => "arc.pass",
            ArcFail => "arc.fail",
            ArcNone => "arc.none",
            ArcOverride => "arc.override",
            IprevPass => "iprev.pass",
            IprevFail => "iprev.fail",
            IprevTempError => "iprev.temperror",
            IprevNone => "iprev.none",
            ForgedAuthResults => "headers.forged_auth_results",
            LocalSenderForged => "local_sender.forged",
            LocalSenderVouched => "local_sender.vouched",
            LocalSenderTempError => "local_sender.temperror",
            EarlyTalker => "early_talker",
            NonSmtpCommand => "non_smtp_command",
            UnauthorizedPipelining => "unauthorized_pipelining",
            BareLfCommand => "bare_lf_command",
            TooManyErrors => "too_many_errors",
            DnsblListed => "dnsbl_listed",
            DnswlListed => "dnswl_listed",
            RhsblListed => "rhsbl_listed",
            DnsblScore => "dnsbl_score",
            NoPtr => "no_ptr",
            PtrNotConfirmed => "ptr_not_confirmed",
            PtrTempError => "ptr_temperror",
            HeloSyntax => "helo_syntax",
            HeloNotFqdn => "helo_not_fqdn",
            HeloIsOurs => "helo_is_ours",
            HeloLiteralMismatch => "helo_literal_mismatch",
            HeloUnresolvable => "helo_unresolvable",
            Greylisted => "greylisted",
            GreylistUnavailable => "greylist_unavailable",
            FromMissing => "headers.from_missing",
            FromNoAddress => "headers.from_no_address",
            DisplayNameAddress => "headers.display_name_address",
            ToMissing => "headers.to_missing",
            ToEmpty => "headers.to_empty",
            DateMissing => "headers.date_missing",
            DateInvalid => "headers.date_invalid",
            DateFuture => "headers.date_future",
            DatePast => "headers.date_past",
            MessageIdMissing => "headers.message_id_missing",
            MessageIdMalformed => "headers.message_id_malformed",
            MessageIdNotFqdn => "headers.message_id_not_fqdn",
            ReplyToElsewhere => "headers.reply_to_elsewhere",
            DuplicateHeader => "headers.duplicate",
            ForgedReceived => "headers.forged_received",
            IpUrl => "content.ip_url",
            LinkMismatch => "content.link_mismatch",
            UriblListed => "content.uribl_listed",
            ClassifierSpam => "content.classifier_spam",
            ClassifierHam => "content.classifier_ham",
            SpamScore => "content.spam_score",
            ReputationBad => "reputation.bad",
            ReputationGood => "reputation.good",
            Correspondent => "reputation.correspondent",
            ReplyToOurs => "reputation.reply",
            HeaderSize => "shape.header_size",
            HeaderFields => "shape.header_fields",
            TooManyHops => "shape.too_many_hops",
            MimeDepth => "shape.mime_depth",
            NoSuchUser => "rcpt.no_such_local_user",
            RelayDenied => "rcpt.relay_attempt_without_authentication",
            RcptAddressLiteral => "rcpt.recipient_is_an_address_literal",
            RelayAddressLiteral => "rcpt.relay_to_an_address_literal",
            RoutingUnavailable => "rcpt.store_unavailable",
            SenderNotOwned => "ownership.envelope",
            HeaderNotOwned => "ownership.header",
            OwnershipUnavailable => "ownership.store_unavailable",
            MessageLimit => "limits.messages",
            RecipientLimit => "rcpt.recipient_limit_reached",
            Suspended => "containment.suspended",
            AccountStateUnavailable => "containment.state_unavailable",
            AuthBlocked => "auth.auth_from_a_network_blocked_for_failed_logins",
            AuthLineFull => {
                "auth.auth_while_earlier_failures_from_this_address_or_network_hold_the_line"
            }
            AuthVerifiersBusy => "auth.auth_while_the_password_verifiers__queue_is_full",
            AuthBackendError => "auth.auth_backend_error",
            AuthInvalid => "auth.invalid_credentials",
            AuthSuspended => "auth.account_suspended",
            AuthSuspendedAtLogin => "auth.account_suspended_at_login",
            AuthPopBeforeSmtp => "auth.pop_before_smtp",
            SpoolWriteFailed => "data.spool_write_failed",
            SpoolReadFailed => "data.spool_read_failed",
            SpoolRewriteFailed => "data.spool_rewrite_failed",
            MemoryExhausted => "data.message_memory_budget_exhausted",
            ChecksFailed => "data.checks_failed",
            QuarantineFailed => "data.quarantine_write_failed",
            QueueFailed => "data.queue_failure",
            NoTransaction => "data.no_transaction",
            SessionPanic => "session.panic",
            Protocol(verb, why) => {
                return Cow::Owned(format!(
                    "{}.{}",
                    verb.as_str().to_ascii_lowercase(),
                    why.slug()
                ));
            }
        })
    }

    /// The record's `check` column: the family a finding belongs to.
    pub fn family(self) -> &'static str {
        use Kind::*;
        match self {
            SpfPass | SpfFail | SpfSoftFail | SpfNeutral | SpfNone | SpfTempError
            | SpfPermError => "spf",
            DkimPass | DkimFail | DkimNone | DkimTempError | DkimPermError | DkimWeak
            | DkimCapped => "dkim",
            DmarcPass | DmarcFail | DmarcNone | DmarcTempError | DmarcPermError => "dmarc",
            ArcPass | ArcFail | ArcNone | ArcOverride => "arc",
            IprevPass | IprevFail | IprevTempError | IprevNone => "iprev",
            LocalSenderForged | LocalSenderVouched | LocalSenderTempError => "local_sender",
            k if k.screening().is_some() => "screen",
            ForgedAuthResults | FromMissing | FromNoAddress | DisplayNameAddress | ToMissing
            | ToEmpty | DateMissing | DateInvalid | DateFuture | DatePast | MessageIdMissing
            | MessageIdMalformed | MessageIdNotFqdn | ReplyToElsewhere | DuplicateHeader
            | ForgedReceived => "headers",
            IpUrl | LinkMismatch | UriblListed | ClassifierSpam | ClassifierHam | SpamScore => {
                "content"
            }
            ReputationBad | ReputationGood | Correspondent | ReplyToOurs => "reputation",
            HeaderSize | HeaderFields | TooManyHops | MimeDepth => "shape",
            NoSuchUser | RelayDenied | RcptAddressLiteral | RelayAddressLiteral
            | RoutingUnavailable | RecipientLimit => "rcpt",
            SenderNotOwned | HeaderNotOwned | OwnershipUnavailable => "ownership",
            MessageLimit => "limits",
            Suspended | AccountStateUnavailable => "containment",
            AuthBlocked | AuthLineFull | AuthVerifiersBusy | AuthBackendError | AuthInvalid
            | AuthSuspended | AuthSuspendedAtLogin | AuthPopBeforeSmtp => "auth",
            SpoolWriteFailed | SpoolReadFailed | SpoolRewriteFailed | MemoryExhausted
            | ChecksFailed | QuarantineFailed | QueueFailed | NoTransaction => "data",
            SessionPanic => "session",
            // The verb, lowercased, as records have always named it.
            Protocol(verb, _) => match verb {
                Verb::Connect => "connect",
                Verb::Helo => "helo",
                Verb::Ehlo => "ehlo",
                Verb::Mail => "mail",
                Verb::Rcpt => "rcpt",
                Verb::Data => "data",
                Verb::Bdat => "bdat",
                Verb::Rset => "rset",
                Verb::Noop => "noop",
                Verb::Quit => "quit",
                Verb::Help => "help",
                Verb::Vrfy => "vrfy",
                Verb::Expn => "expn",
                Verb::StartTls => "starttls",
                Verb::Auth => "auth",
                Verb::Unknown => "unknown",
            },
            _ => "screen",
        }
    }

    /// The screening check a finding of the door belongs to, if it is one.
    pub fn screening(self) -> Option<Policy> {
        use Kind::*;
        Some(match self {
            EarlyTalker => Policy::Pregreet,
            NonSmtpCommand | UnauthorizedPipelining | BareLfCommand | TooManyErrors => {
                Policy::Protocol
            }
            DnsblListed | DnswlListed | RhsblListed | DnsblScore => Policy::Dnsbl,
            NoPtr | PtrNotConfirmed | PtrTempError => Policy::Rdns,
            HeloSyntax | HeloNotFqdn | HeloIsOurs | HeloLiteralMismatch | HeloUnresolvable => {
                Policy::Helo
            }
            Greylisted | GreylistUnavailable => Policy::Greylist,
            _ => return None,
        })
    }

    /// The policy whose `mode` governs this finding's refusal; `None`: always enforced.
    pub fn policy(self) -> Option<Policy> {
        use Kind::*;
        if let Some(p) = self.screening() {
            return Some(p);
        }
        Some(match self.family() {
            "spf" => Policy::Spf,
            "dkim" => Policy::Dkim,
            "arc" => Policy::Arc,
            "dmarc" => Policy::Dmarc,
            "iprev" => Policy::Iprev,
            "local_sender" => Policy::LocalForgery,
            "content" | "reputation" => Policy::Scoring,
            _ if matches!(self, ForgedAuthResults) => return None,
            "headers" => Policy::Scoring,
            _ => return None,
        })
    }

    /// Found by what a client did over time (pregreet, greylisting, protocol habits), which
    /// `explain FILE.eml` cannot know.
    pub const BEHAVIOURAL: [Kind; 7] = [
        Kind::EarlyTalker,
        Kind::Greylisted,
        Kind::GreylistUnavailable,
        Kind::NonSmtpCommand,
        Kind::UnauthorizedPipelining,
        Kind::BareLfCommand,
        Kind::TooManyErrors,
    ];

    pub fn behavioural(self) -> bool {
        Kind::BEHAVIOURAL.contains(&self)
    }
}

/// One policy's finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    /// For people: what was seen. Never a secret; may hold attacker-controlled text.
    pub detail: String,
    /// Added to its score: the content score, or the DNS lists' weight.
    pub score: f64,
    /// What the client gets when this finding's policy enforces; `None`: scored only.
    pub refusal: Option<Reply>,
    /// Asks for the Junk folder when its policy enforces (DMARC `p=quarantine`).
    pub junk: bool,
    /// Where the evidence came from (a DNS list's zone); may be empty.
    pub source: String,
}

impl Finding {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            detail: detail.into(),
            score: 0.0,
            refusal: None,
            junk: false,
            source: String::new(),
        }
    }

    pub fn scored(kind: Kind, detail: impl Into<String>, score: f64) -> Finding {
        Finding {
            score,
            ..Finding::new(kind, detail)
        }
    }

    /// A finding that refuses with `reply`, whatever policy it belongs to.
    pub fn refusing(kind: Kind, detail: impl Into<String>, reply: Reply) -> Finding {
        Finding::new(kind, detail).refuse(reply)
    }

    pub fn refuse(mut self, reply: Reply) -> Finding {
        self.refusal = Some(reply);
        self
    }

    pub fn to_junk(mut self) -> Finding {
        self.junk = true;
        self
    }

    pub fn from_source(mut self, source: impl Into<String>) -> Finding {
        self.source = source.into();
        self
    }

    /// The finding as a decision record keeps it.
    pub fn record(&self, deciding: bool) -> crate::records::Reason {
        crate::records::Reason {
            check: self.kind.family().to_string(),
            code: self.kind.code().into_owned(),
            detail: self.detail.clone(),
            score: self.score,
            deciding,
            counted: false,
        }
    }
}
