//! The policy of each SMTP stage a session reaches, in the one check shape: every policy is
//! a function of what the stage knows that returns findings, and the stage's decision goes
//! through `crate::decision::apply`. The session driver (`session.rs`) only routes protocol
//! events here and acts on the answer. The end of DATA is `message.rs`; AUTH is `auth.rs`.
//!
//! - connect: the connection limits ([`connect`]);
//! - MAIL without AUTH, POP-before-SMTP on: the account a POP3 login granted ([`granted`]);
//! - MAIL: free space, the account's suspension, sender ownership and the account's message
//!   limits, in that order (a limit is reserved only when the rest allow it) ([`mail`]);
//! - RCPT: routing and relay, screening's verdict and greylisting (MX), the account's
//!   recipient limits (submission) ([`rcpt`]).

use super::ctx::Ctx;
use super::early::Early;
use super::screen::Screen;
use super::shared::{ListenerKind, Shared};
use crate::checks::ownership;
use crate::containment::detector::Limited;
use crate::decision::{Finding, Kind};
use crate::queue::{Folder, Route};
use crate::routing::RcptDecision;
use mailwarden_proto::address::ForwardPath;
use mailwarden_proto::command::Verb;
use mailwarden_proto::replies;
use mailwarden_proto::session::Session;
use std::net::IpAddr;

/// Connect: the concurrent-connection and connection-rate limits. The slot is held for the
/// session's life.
pub(super) fn connect(shared: &Shared, ip: IpAddr) -> Result<crate::limits::conn::Slot, Finding> {
    let refused = |detail: String| {
        Finding::refusing(
            Kind::Protocol(Verb::Connect, mailwarden_proto::Why::Policy),
            detail,
            replies::TOO_MANY_CONNECTIONS,
        )
    };
    let slot = shared
        .limiter
        .acquire(ip)
        .map_err(|why| refused(format!("{why:?}")))?;
    shared
        .contain
        .detector
        .connection(ip)
        .map_err(|l| refused(l.reason))?;
    Ok(slot)
}

/// The refusal for a suspended account, if it is one. A store that cannot say answers
/// `451 4.3.0`: a suspension is never assumed away.
pub(super) fn suspension(shared: &Shared, account: &str) -> Option<Finding> {
    match shared.contain.is_suspended(account) {
        Ok(false) => None,
        Ok(true) => Some(Finding::refusing(
            Kind::Suspended,
            format!("account {account} is suspended"),
            replies::ACCOUNT_SUSPENDED,
        )),
        Err(e) => {
            tracing::error!(event = "suspension_check_failed", account, error = %e);
            Some(Finding::refusing(
                Kind::AccountStateUnavailable,
                format!("cannot read the state of {account}: {e}"),
                replies::LOCAL_ERROR,
            ))
        }
    }
}

/// A limit reached, as a finding; the account is marked throttled.
pub(super) async fn limited(
    shared: &Shared,
    account: Option<&str>,
    kind: Kind,
    l: Limited,
) -> Finding {
    if let Some(a) = account {
        shared.contain.throttled(a, &l).await;
    }
    let reply = replies::rate_limited(&l.reason);
    Finding::refusing(kind, l.reason, reply)
}

/// MAIL without AUTH with POP-before-SMTP on (`grants.rs`): the account `ip` may send as now: a grant whose account still has the password it had at
/// the POP3 login and is not suspended. Why not, otherwise (for the log).
pub(super) fn granted(shared: &Shared, ip: IpAddr) -> Result<String, &'static str> {
    let (account, stamp) = shared.grants.lookup(ip).map_err(|w| w.as_str())?;
    match shared.accounts.password_stamp(&account) {
        Ok(Some(now)) if now == stamp => {}
        Ok(_) => return Err("password_changed"),
        Err(_) => return Err("store_error"),
    }
    match shared.contain.is_suspended(&account) {
        Ok(false) => Ok(account),
        Ok(true) => Err("suspended"),
        Err(_) => Err("store_error"),
    }
}

/// MAIL FROM: the refusal, if any policy refuses (`None`: the sender is taken). On the
/// submission ports the transaction's reservation against the account's limits is made here,
/// so parallel sessions cannot all pass a limit at once.
pub(super) async fn mail(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &Session,
    sender: &str,
) -> Option<Finding> {
    if shared.free_space.is_low() {
        return Some(Finding::refusing(
            Kind::Protocol(Verb::Mail, mailwarden_proto::Why::StorageLow),
            "storage low",
            replies::NO_STORAGE,
        ));
    }
    let account = s.authenticated()?;
    if let Some(f) = suspension(shared, account) {
        return Some(f);
    }
    if ctx.listener == ListenerKind::Mx {
        return None;
    }
    if let Err(f) = ownership::envelope(&shared.accounts, account, sender) {
        return Some(f);
    }
    let domain = sender.rsplit_once('@').map(|(_, d)| d);
    match shared.contain.detector.reserve_message(account, domain) {
        Ok(r) => {
            ctx.reservation = Some(r);
            None
        }
        Err(l) => Some(limited(shared, Some(account), Kind::MessageLimit, l).await),
    }
}

/// RCPT TO: where the recipient goes, or the finding that refuses it. Screening's findings
/// join the transaction's record here.
pub(super) async fn rcpt(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &Session,
    screen: Option<&mut Screen>,
    early: &mut Early,
    to: &ForwardPath,
) -> Result<Route, Finding> {
    let addr = to.to_string();
    let routed = match shared.routing.decide(to, s.authenticated().is_some()) {
        RcptDecision::Local { mailbox } => Ok(Route::Local {
            mailbox,
            folder: Folder::Inbox,
        }),
        RcptDecision::Remote => Ok(Route::Remote),
        RcptDecision::Refuse(f) => Err(f),
    };
    // Screening acts here, late, so the one reject line names everything.
    let route = match screen {
        None => routed,
        Some(sc) => {
            let mut refusal = sc.verdict(shared, s, early, &ctx.session).await;
            ctx.rec.note_screen(sc.version(), true, || sc.reasons());
            if refusal.is_none() && routed.is_ok() {
                let from = ctx.from.clone().unwrap_or_default();
                if let Some((f, v)) = sc.greylist(shared, early, &from, &addr, &ctx.session).await {
                    if ctx.rec.note_first(f.record(false)) {
                        ctx.rec
                            .note(v.would_records(std::slice::from_ref(&f), None), None);
                    }
                    if v.action.refusal().is_some() {
                        refusal = Some(f);
                    }
                }
            }
            match refusal {
                Some(f) => Err(f),
                None => routed,
            }
        }
    };
    let route = route?;
    // Each recipient counts against the account's day when it is accepted.
    if let Some(r) = ctx.reservation.as_mut()
        && let Err(l) = shared.contain.detector.reserve_rcpt(r, &addr)
    {
        tracing::info!(event = "rate_limited", session = %ctx.session, rcpt = %addr, reason = %l.reason);
        return Err(limited(shared, s.authenticated(), Kind::RecipientLimit, l).await);
    }
    Ok(route)
}

/// After a refused RCPT on the submission ports: guessing local addresses with a stolen
/// account (BlockCracking) suspends it.
pub(super) async fn rcpt_refused(shared: &Shared, ctx: &Ctx, s: &Session, why: &Finding) {
    if why.kind == Kind::NoSuchUser
        && ctx.listener != ListenerKind::Mx
        && let Some(account) = s.authenticated()
        && let Some(t) = shared.contain.detector.unknown_recipient(account)
    {
        shared.contain.suspend(account, t, &ctx.session).await;
    }
}
