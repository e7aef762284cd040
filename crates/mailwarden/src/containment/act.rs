//! Acting on containment: suspend an account when the [`Detector`] names a trigger (its mail
//! waiting for delivery is held), tell the postmaster, and log it; record throttling so
//! `user status` shows it. Sessions and outbound delivery (remote 5xx replies) both feed it.

use super::{Detector, Limited, Trigger};
use crate::config::Config;
use crate::limits::Clock;
use crate::queue::{Folder, Message, Queue, Recipient, Route};
use crate::routing::{RcptDecision, Routing};
use crate::store::Store;
use crate::util::{new_id, rfc5322_date};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How often, at most, a throttled account's state is written to the store.
const THROTTLE_RECORD_SECS: i64 = 60;

pub struct Containment {
    pub detector: Detector,
    /// Accounts being suspended now: suspended for every check in this process at once,
    /// before the store has it, so parallel sessions of a blast are stopped at their next
    /// check, not after the write.
    suspending: Mutex<std::collections::HashSet<String>>,
    config: Arc<Config>,
    store: Store,
    queue: Arc<Queue>,
    routing: Routing,
    throttle_recorded: Mutex<HashMap<String, i64>>,
    clock: Arc<dyn Clock>,
}

impl Containment {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        queue: Arc<Queue>,
        routing: Routing,
        clock: Arc<dyn Clock>,
    ) -> Containment {
        Containment {
            detector: Detector::new(&config.containment, &config.auth, clock.clone())
                .with_store(store.clone()),
            clock,
            suspending: Mutex::new(Default::default()),
            config,
            store,
            queue,
            routing,
            throttle_recorded: Mutex::new(HashMap::new()),
        }
    }

    /// Suspend `account` for `t`; `context` names the session or message that showed it.
    pub async fn suspend(&self, account: &str, t: Trigger, context: &str) {
        lock(&self.suspending).insert(account.to_string());
        // Removed however this ends (done, failed, dropped or panicking): past it, the store
        // alone says whether the account is suspended, so `user resume` is never overruled.
        struct Done<'a>(&'a Mutex<std::collections::HashSet<String>>, &'a str);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                lock(self.0).remove(self.1);
            }
        }
        let _done = Done(&self.suspending, account);
        self.suspend_stored(account, t, context).await;
    }

    async fn suspend_stored(&self, account: &str, t: Trigger, context: &str) {
        let store = self.store.clone();
        let (a, reason, evidence) = (account.to_string(), t.reason, t.evidence.clone());
        let now = self.clock.now_secs();
        // Once is enough: outbound replies can still arrive for mail sent before.
        let held = tokio::task::spawn_blocking(move || {
            if super::is_suspended(&store, &a, now)? {
                return Ok(None);
            }
            super::suspend(&store, &a, reason, &evidence, now).map(Some)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let held = match held {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(event = "suspend_failed", account, error = %e);
                return;
            }
        };
        metrics::counter!("mailwarden_account_suspensions_total", "reason" => t.reason)
            .increment(1);
        tracing::warn!(event = "account_suspended", context, account, reason = t.reason,
            evidence = %t.evidence, held);
        self.notify_postmaster(account, &t, held).await;
    }

    /// Is `account` suspended now? (The store is the truth: the CLI suspends and resumes.)
    pub fn is_suspended(&self, account: &str) -> Result<bool, crate::store::StoreError> {
        if lock(&self.suspending).contains(account) {
            return Ok(true);
        }
        super::is_suspended(&self.store, account, self.clock.now_secs())
    }

    /// A limit refused `account` a message: record it as throttled (at most once a minute).
    pub async fn throttled(&self, account: &str, l: &Limited) {
        metrics::counter!("mailwarden_rate_limited_total").increment(1);
        let now = self.clock.now_secs();
        {
            let mut m = lock(&self.throttle_recorded);
            m.retain(|_, t| now - *t < THROTTLE_RECORD_SECS);
            if m.contains_key(account) {
                return;
            }
            m.insert(account.to_string(), now);
        }
        let store = self.store.clone();
        let (a, r) = (account.to_string(), l.reason.clone());
        match tokio::task::spawn_blocking(move || super::throttle(&store, &a, &r, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(event = "throttle_record_failed", account, error = %e),
            Err(e) => tracing::error!(event = "throttle_record_failed", account, error = %e),
        }
    }

    /// A remote server refused, with a 5xx, a recipient of mail `account` submitted.
    pub async fn remote_rejected(&self, account: &str, qid: &str) {
        if let Some(t) = self.detector.remote_rejected(account) {
            self.suspend(account, t, qid).await;
        }
    }

    async fn notify_postmaster(&self, account: &str, t: &Trigger, held: usize) {
        let text = format!(
            "mailwarden suspended the account {account}.\r\n\r\n\
             Reason:   {reason}\r\nEvidence: {evidence}\r\nHeld:     {held} recipient(s) of mail \
             waiting for delivery\r\n\r\n\
             It cannot log in or send until you resume it:\r\n\
             \x20 mailwarden user status {account}\r\n\
             \x20 mailwarden user resume {account} --release   (or --delete)\r\n",
            reason = t.reason,
            evidence = t.evidence,
        );
        let subject = format!("Account suspended: {account}");
        if let Err(e) = notify_postmaster(
            &self.config,
            &self.routing,
            &self.queue,
            self.clock.now_secs(),
            "containment",
            &subject,
            &text,
        )
        .await
        {
            tracing::error!(event = "postmaster_notice_failed", account, error = %e);
        }
    }
}

/// Send the postmaster a plain-text notice (a suspension, an address of ours listed),
/// through the queue into their local mailbox. `source` names the generating part, as the
/// queue's listener.
pub async fn notify_postmaster(
    cfg: &Config,
    routing: &Routing,
    queue: &Queue,
    now: i64,
    source: &str,
    subject: &str,
    text: &str,
) -> anyhow::Result<()> {
    let RcptDecision::Local { mailbox } =
        routing.decide(&mailwarden_proto::address::ForwardPath::Postmaster, true)
    else {
        anyhow::bail!("the postmaster has no local mailbox");
    };
    let id = new_id();
    let body = format!(
        "From: mailwarden <MAILER-DAEMON@{host}>\r\nTo: <{mailbox}>\r\n\
         Subject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{id}@{host}>\r\nAuto-Submitted: auto-generated\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{text}",
        host = cfg.hostname,
        date = rfc5322_date(now),
    );
    let to = Recipient {
        idx: 0,
        address: mailbox.clone(),
        route: Route::Local {
            mailbox,
            folder: Folder::Inbox,
        },
    };
    let msg = Message::generated(source, &cfg.hostname, now, to, body.into_bytes());
    queue.enqueue(msg).await?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
