//! Typed outcomes of checks: a stable reason code (for logs, metrics and, later, decision
//! records and `explain`), a detail for people, and the action the evidence calls for.

use mailwarden_proto::Reply;

/// Stable reason codes. Their text form (`spf.fail`) never changes once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
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
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::SpfPass => "spf.pass",
            Code::SpfFail => "spf.fail",
            Code::SpfSoftFail => "spf.softfail",
            Code::SpfNeutral => "spf.neutral",
            Code::SpfNone => "spf.none",
            Code::SpfTempError => "spf.temperror",
            Code::SpfPermError => "spf.permerror",
            Code::DkimPass => "dkim.pass",
            Code::DkimFail => "dkim.fail",
            Code::DkimNone => "dkim.none",
            Code::DkimTempError => "dkim.temperror",
            Code::DkimPermError => "dkim.permerror",
            Code::DkimWeak => "dkim.weak",
            Code::DkimCapped => "dkim.capped",
            Code::DmarcPass => "dmarc.pass",
            Code::DmarcFail => "dmarc.fail",
            Code::DmarcNone => "dmarc.none",
            Code::DmarcTempError => "dmarc.temperror",
            Code::DmarcPermError => "dmarc.permerror",
            Code::ArcPass => "arc.pass",
            Code::ArcFail => "arc.fail",
            Code::ArcNone => "arc.none",
            Code::ArcOverride => "arc.override",
            Code::IprevPass => "iprev.pass",
            Code::IprevFail => "iprev.fail",
            Code::IprevTempError => "iprev.temperror",
            Code::IprevNone => "iprev.none",
            Code::ForgedAuthResults => "headers.forged_auth_results",
            Code::LocalSenderForged => "local_sender.forged",
            Code::LocalSenderVouched => "local_sender.vouched",
            Code::LocalSenderTempError => "local_sender.temperror",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub code: Code,
    pub detail: String,
}

impl Reason {
    pub fn new(code: Code, detail: impl Into<String>) -> Reason {
        Reason {
            code,
            detail: detail.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Deliver to the recipients' Junk folders, marked.
    Junk,
    TempFail(Reply),
    Reject(Reply),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Junk => "junk",
            Action::TempFail(_) => "tempfail",
            Action::Reject(_) => "reject",
        }
    }
}

/// What the checks decided, with every reason and the one that decided.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub action: Action,
    /// The reason behind a non-accept action (or behind `would`).
    pub deciding: Option<Reason>,
    /// What an observe-mode check would have done.
    pub would: Option<Action>,
    pub reasons: Vec<Reason>,
}

impl Verdict {
    pub fn accept(reasons: Vec<Reason>) -> Verdict {
        Verdict {
            action: Action::Accept,
            deciding: None,
            would: None,
            reasons,
        }
    }
}
