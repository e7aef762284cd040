//! Acting on a containment trigger: suspend the account (its mail waiting for delivery is
//! held), tell the postmaster, and log it. See `containment.rs` for the triggers.

use super::Shared;
use crate::checks::relay::RcptDecision;
use crate::containment::{self, Trigger};
use crate::queue::{Folder, Message, Recipient, Route};
use crate::util::{new_id, rfc5322_date, unix_now};

pub(super) async fn suspend(shared: &Shared, account: &str, t: Trigger, session: &str) {
    let store = shared.accounts.store().clone();
    let (a, reason, evidence) = (account.to_string(), t.reason, t.evidence.clone());
    let held =
        tokio::task::spawn_blocking(move || containment::suspend(&store, &a, reason, &evidence))
            .await;
    let held = match held {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::error!(event = "suspend_failed", account, error = %e);
            return;
        }
        Err(e) => {
            tracing::error!(event = "suspend_failed", account, error = %e);
            return;
        }
    };
    tracing::warn!(event = "account_suspended", session, account, reason = t.reason,
        evidence = %t.evidence, held);
    notify_postmaster(shared, account, &t, held).await;
}

async fn notify_postmaster(shared: &Shared, account: &str, t: &Trigger, held: usize) {
    let cfg = &shared.config;
    let RcptDecision::Local { mailbox } = shared
        .routing
        .decide(&mailwarden_proto::address::ForwardPath::Postmaster, true)
    else {
        return;
    };
    let now = unix_now();
    let id = new_id();
    let body = format!(
        "From: mailwarden <MAILER-DAEMON@{host}>\r\nTo: <{mailbox}>\r\n\
         Subject: Account suspended: {account}\r\nDate: {date}\r\n\
         Message-ID: <{id}@{host}>\r\nAuto-Submitted: auto-generated\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         mailwarden suspended the account {account}.\r\n\r\n\
         Reason:   {reason}\r\nEvidence: {evidence}\r\nHeld:     {held} recipient(s) of mail \
         waiting for delivery\r\n\r\n\
         It cannot log in or send until you resume it:\r\n\
         \x20 mailwarden user status {account}\r\n\
         \x20 mailwarden user resume {account} --release   (or --delete)\r\n",
        host = cfg.hostname,
        date = rfc5322_date(now),
        reason = t.reason,
        evidence = t.evidence,
    );
    let to = Recipient {
        idx: 0,
        address: mailbox.clone(),
        route: Route::Local {
            mailbox,
            folder: Folder::Inbox,
        },
    };
    let msg = Message::generated("containment", &cfg.hostname, now, to, body.into_bytes());
    if let Err(e) = shared.queue.enqueue(msg).await {
        tracing::error!(event = "postmaster_notice_failed", account, error = %e);
    }
}
