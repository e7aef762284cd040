//! The console's pages and actions. Each action is one call of the library function its CLI
//! command uses; each page reads what the matching CLI command prints.
//!
//! Security: ids, addresses and domains come from URLs and forms: they are only ever used as
//! SQL parameters and escaped output. Lists are capped ([`MAX_ROWS`]).

use super::view::{self, ACTIONS, action, seg, when};
use super::{Admin, C, Fields, Params, Seg, Seg2, blocking};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use std::collections::HashMap;

/// The most rows a list shows.
const MAX_ROWS: usize = 500;

macro_rules! admin {
    ($c:expr, $h:expr) => {
        match $c.admin(&$h) {
            Ok(a) => a,
            Err(r) => return r,
        }
    };
}

macro_rules! admin_post {
    ($c:expr, $h:expr, $f:expr, $what:expr) => {
        match $c.admin_post(&$h, &$f, $what) {
            Ok(a) => a,
            Err(r) => return r,
        }
    };
}

macro_rules! tryr {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

fn render(a: &Admin, title: &str, active: &str, body: Markup) -> Response {
    view::page(
        title,
        active,
        &a.session.account,
        &a.session.csrf,
        a.session.flash.as_deref(),
        body,
    )
    .into_response()
}

fn not_found(a: &Admin, active: &str, what: &str) -> Response {
    let mut r = render(a, "Not found", active, html! { p id="error" { (what) } });
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// After an action: say what it did on the next page.
fn done(c: &super::Console, a: &Admin, to: &str, msg: String) -> Response {
    tracing::info!(event = "console_action", user = %a.session.account, done = %msg);
    c.sessions.flash(&a.token, msg);
    Redirect::to(to).into_response()
}

// ---------------------------------------------------------------------------------- overview

/// What the overview shows, read from the decision records, the queue and containment.
#[derive(Default)]
pub struct Overview {
    pub hours: Vec<[u64; 5]>,
    pub days: Vec<[u64; 5]>,
    pub refused_ips: Vec<(String, u64)>,
    pub refused_networks: Vec<(String, u64)>,
    pub refused_reasons: Vec<(String, u64)>,
    pub queue: Vec<crate::queue::admin::StateCount>,
    pub contained: Vec<(String, String, i64, String)>,
}

fn slot(action: &str) -> Option<usize> {
    ACTIONS.iter().position(|(a, _)| *a == action)
}

/// The network an address is counted in: its /24, or its /64.
fn network_of(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v)) => {
            let o = v.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(v)) => {
            let s = v.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => ip.to_string(),
    }
}

fn top(m: HashMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

pub fn overview_data(store: &crate::store::Store, now: i64) -> anyhow::Result<Overview> {
    let mut o = Overview {
        hours: vec![[0; 5]; 24],
        days: vec![[0; 5]; 30],
        ..Default::default()
    };
    let since = now - 30 * 86400;
    let rows: Vec<(String, i64, i64)> = store.read(|c| {
        c.query_map(
            "SELECT action, CAST(time / 3600 AS BIGINT) AS h, CAST(COUNT(*) AS BIGINT) \
             FROM decisions WHERE time >= ?1 GROUP BY action, h",
            crate::params![since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    })?;
    for (action, hour, n) in rows {
        let Some(k) = slot(&action) else { continue };
        let age_h = now / 3600 - hour;
        if (0..24).contains(&age_h) {
            o.hours[23 - age_h as usize][k] += n as u64;
        }
        let age_d = (now - hour * 3600) / 86400;
        if (0..30).contains(&age_d) {
            o.days[29 - age_d as usize][k] += n as u64;
        }
    }
    // The refusals of the last day: who, from where, why (deciding reasons).
    let refused: Vec<String> = store.read(|c| {
        c.query_map(
            "SELECT data FROM decisions WHERE time >= ?1 AND action IN ('reject', 'tempfail') \
             ORDER BY time DESC LIMIT 5000",
            crate::params![now - 86400],
            |r| r.get(0),
        )
    })?;
    let (mut ips, mut nets, mut why) = (HashMap::new(), HashMap::new(), HashMap::new());
    for d in refused {
        let Ok(r) = serde_json::from_str::<crate::records::Record>(&d) else {
            continue;
        };
        *ips.entry(r.ip.clone()).or_insert(0) += 1;
        *nets.entry(network_of(&r.ip)).or_insert(0) += 1;
        for x in r.reasons.iter().filter(|x| x.deciding) {
            *why.entry(x.code.clone()).or_insert(0) += 1;
        }
    }
    o.refused_ips = top(ips, 10);
    o.refused_networks = top(nets, 10);
    o.refused_reasons = top(why, 10);
    o.queue = crate::queue::admin::stats(store)?;
    let contained: Vec<String> = store.read(|c| {
        c.query_map(
            "SELECT account FROM account_state WHERE state IN ('suspended', 'throttled') \
             ORDER BY since DESC LIMIT 200",
            (),
            |r| r.get(0),
        )
    })?;
    for a in contained {
        let st = crate::containment::state(store, &a, now)?;
        if st.state != crate::containment::State::Active {
            o.contained
                .push((a, st.state.as_str().to_string(), st.since, st.reason));
        }
    }
    Ok(o)
}

fn counts_table(
    title: &str,
    rows: &[(String, u64)],
    link: impl Fn(&str) -> Option<String>,
) -> Markup {
    html! {
        h3 { (title) }
        @if rows.is_empty() { p { "none" } } @else {
            table { tr { th { "" } th { "refused" } }
                @for (k, n) in rows {
                    tr { td { @if let Some(href) = link(k) { a href=(href) { (k) } } @else { (k) } } td { (n) } }
                }
            }
        }
    }
}

pub async fn overview(State(c): C, h: HeaderMap) -> Response {
    let a = admin!(c, h);
    let (store, now) = (c.store.clone(), c.now());
    let o = tryr!(blocking(move || overview_data(&store, now)).await);
    let sum = |v: &[[u64; 5]], k: usize| v.iter().map(|c| c[k]).sum::<u64>();
    let body = html! {
        h2 { "Last 24 hours" }
        div id="totals-24h" {
            @for (k, (action, _)) in ACTIONS.iter().enumerate() {
                div.card { b id=(format!("day-{action}")) { (sum(&o.hours, k)) } (action) }
            }
        }
        (view::chart("chart-24h", "Decisions per hour, last 24 hours", &o.hours, |i| format!("{} h ago", 23 - i)))
        h2 { "Last 30 days" }
        div {
            @for (k, (action, _)) in ACTIONS.iter().enumerate() {
                div.card { b { (sum(&o.days, k)) } (action) }
            }
        }
        (view::chart("chart-30d", "Decisions per day, last 30 days", &o.days, |i| format!("{} d ago", 29 - i)))
        h2 { "Refused in the last 24 hours" }
        (counts_table("Sources", &o.refused_ips, |ip| Some(format!("/decisions?ip={}", seg(ip)))))
        (counts_table("Networks", &o.refused_networks, |_| None))
        (counts_table("Deciding reasons", &o.refused_reasons, |r| Some(format!("/decisions?reason={}", seg(r)))))
        h2 { "Queue" }
        @if o.queue.is_empty() { p { "The queue is empty." } } @else {
            table { tr { th { "state" } th { "recipients" } th { "oldest" } }
                @for q in &o.queue {
                    tr { td { (q.status) } td { (q.recipients) } td { (when(q.oldest)) } }
                }
            }
        }
        h2 { "Suspended and throttled accounts" }
        @if o.contained.is_empty() { p { "none" } } @else {
            table { tr { th { "account" } th { "state" } th { "since" } th { "reason" } }
                @for (acc, st, since, reason) in &o.contained {
                    tr { td { a href=(format!("/accounts/{}", seg(acc))) { (acc) } } td { (st) } td { (when(*since)) } td { (reason) } }
                }
            }
        }
    };
    render(&a, "Overview", "/", body)
}

// --------------------------------------------------------------------------------- decisions

pub async fn decisions(State(c): C, h: HeaderMap, axum::extract::Query(q): Params) -> Response {
    let a = admin!(c, h);
    let get = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let since = match get("since") {
        None => None,
        Some(s) => match crate::config::units::parse_duration(&s) {
            Ok(d) => Some(c.now() - d.get().as_secs() as i64),
            Err(_) => {
                return render(
                    &a,
                    "Decisions",
                    "/decisions",
                    html! { p id="error" { "since: give a duration like 2h or 7d" } },
                );
            }
        },
    };
    let f = crate::records::Filter {
        ip: get("ip"),
        sender: get("sender"),
        rcpt: get("rcpt"),
        since,
        action: get("action"),
        reason: get("reason"),
        limit: 200,
    };
    let store = c.store.clone();
    let found = tryr!(blocking(move || Ok(crate::records::search(&store, &f)?)).await);
    let field = |name: &str, label: &str| {
        let v = q.get(name).cloned().unwrap_or_default();
        html! { label { (label) " " input type="text" name=(name) id=(format!("q-{name}")) value=(v) size="18"; } " " }
    };
    let body = html! {
        form method="get" action="/decisions" {
            (field("sender", "sender")) (field("rcpt", "recipient")) (field("ip", "IP"))
            (field("action", "action")) (field("reason", "reason")) (field("since", "since"))
            button type="submit" id="search" { "Search" }
        }
        p { (found.len()) " record(s), newest first" }
        table id="records" {
            tr { th { "time" } th { "id" } th { "action" } th { "ip" } th { "from" } th { "to" } th { "why" } }
            @for r in &found {
                tr {
                    td { (when(r.time)) }
                    td { a href=(format!("/decisions/{}", seg(&r.id))) { (r.id) } }
                    td { (r.action) }
                    td { (r.ip) }
                    td { (r.mail_from) }
                    td { @for x in &r.rcpts { (x.address) " " } }
                    td { @for x in r.reasons.iter().filter(|x| x.deciding) { (x.code) " " } }
                }
            }
        }
    };
    render(&a, "Decisions", "/decisions", body)
}

pub async fn decision(State(c): C, h: HeaderMap, axum::extract::Path(id): Seg) -> Response {
    let a = admin!(c, h);
    let (store, id2) = (c.store.clone(), id.clone());
    let Some(r) = tryr!(blocking(move || Ok(crate::records::get(&store, &id2)?)).await) else {
        return not_found(&a, "/decisions", &format!("no decision record {id}"));
    };
    // `explain ID`'s very text: deciding reasons first.
    let text = crate::records::report::text(&r);
    let body = html! {
        pre id="explain" { (text) }
        h2 { "Reasons" }
        table { tr { th { "code" } th { "check" } th { "score" } th { "deciding" } th { "detail" } }
            @for x in r.reasons.iter().filter(|x| x.deciding).chain(r.reasons.iter().filter(|x| !x.deciding)) {
                tr { td { (x.code) } td { (x.check) } td { (x.score) } td { @if x.deciding { "yes" } } td { (x.detail) } }
            }
        }
    };
    render(&a, &format!("Decision {id}"), "/decisions", body)
}

// ---------------------------------------------------------------------------------- accounts

pub async fn accounts(State(c): C, h: HeaderMap) -> Response {
    let a = admin!(c, h);
    let (accounts, store, now) = (c.shared.accounts.clone(), c.store.clone(), c.now());
    let list = tryr!(
        blocking(move || {
            let mut out = Vec::new();
            for acc in accounts.list()?.into_iter().take(MAX_ROWS) {
                let st = crate::containment::state(&store, &acc, now)?;
                out.push((acc, st));
            }
            Ok(out)
        })
        .await
    );
    let body = html! {
        table id="accounts" { tr { th { "account" } th { "state" } th { "since" } th { "reason" } }
            @for (acc, st) in &list {
                tr {
                    td { a href=(format!("/accounts/{}", seg(acc))) { (acc) } }
                    td.state { (st.state.as_str()) }
                    td { @if st.since > 0 { (when(st.since)) } }
                    td { (st.reason) }
                }
            }
        }
    };
    render(&a, "Accounts", "/accounts", body)
}

pub async fn account(State(c): C, h: HeaderMap, axum::extract::Path(addr): Seg) -> Response {
    let a = admin!(c, h);
    account_page(&c, &a, &addr, None).await
}

async fn account_page(
    c: &super::Console,
    a: &Admin,
    addr: &str,
    password: Option<String>,
) -> Response {
    let (accounts, store, now, addr2) = (
        c.shared.accounts.clone(),
        c.store.clone(),
        c.now(),
        addr.to_string(),
    );
    let got = tryr!(
        blocking(move || {
            let addr = crate::accounts::canonical(&addr2)?;
            if !accounts.exists(&addr)? {
                return Ok(None);
            }
            let st = crate::containment::state(&store, &addr, now)?;
            let held = crate::containment::held(&store, &addr)?;
            let aliases = accounts.aliases(&addr)?;
            Ok(Some((addr, st, held, aliases)))
        })
        .await
    );
    let Some((addr, st, held, aliases)) = got else {
        return not_found(a, "/accounts", &format!("no account {addr}"));
    };
    let csrf = &a.session.csrf;
    let base = format!("/accounts/{}", seg(&addr));
    let body = html! {
        @if let Some(pw) = &password {
            p.flash id="new-password" { "New password (shown once): " code { (pw) } }
        }
        table id="state" {
            tr { th { "state" } td id="account-state" { (st.state.as_str()) } }
            @if st.since > 0 {
                tr { th { "since" } td { (when(st.since)) } }
                tr { th { "reason" } td { (st.reason) } }
                tr { th { "evidence" } td { (st.evidence) } }
            }
            tr { th { "held mail" } td { (held) " recipient(s)" } }
        }
        @if st.state == crate::containment::State::Suspended {
            (action(&format!("{base}/resume"), csrf, "Resume, releasing held mail", &[("held", "release")]))
            " "
            (action(&format!("{base}/resume"), csrf, "Resume, deleting held mail", &[("held", "delete")]))
        } @else {
            form.inline method="post" action=(format!("{base}/suspend")) {
                input type="hidden" name="csrf" value=(csrf);
                input type="text" name="reason" placeholder="why" size="30";
                button type="submit" id="suspend" { "Suspend" }
            }
        }
        h2 { "May also send as" }
        ul id="aliases" {
            @for al in &aliases {
                li { (al) " " (action(&format!("{base}/alias-remove"), csrf, "Remove", &[("address", al)])) }
            }
        }
        form method="post" action=(format!("{base}/alias-add")) {
            input type="hidden" name="csrf" value=(csrf);
            input type="text" name="address" placeholder="name@domain or @domain" size="30";
            button type="submit" { "Add alias" }
        }
        h2 { "Password" }
        (action(&format!("{base}/password"), csrf, "Reset to a generated password", &[]))
    };
    render(a, &addr, "/accounts", body)
}

pub async fn account_action(
    State(c): C,
    h: HeaderMap,
    axum::extract::Path((addr, what)): Seg2,
    axum::extract::Form(f): Fields,
) -> Response {
    let a = admin_post!(c, h, f, &format!("account {what}"));
    let (store, accounts, now) = (c.store.clone(), c.shared.accounts.clone(), c.now());
    let addr = match crate::accounts::canonical(&addr) {
        Ok(x) => x,
        Err(_) => return not_found(&a, "/accounts", "no such account"),
    };
    let page = format!("/accounts/{}", seg(&addr));
    let arg = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let who = a.session.account.clone();
    let addr2 = addr.clone();
    let result: Result<String, Response> = match what.as_str() {
        "suspend" => {
            let reason = Some(arg("reason"))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "suspended by an administrator".into());
            blocking(move || {
                if !accounts.exists(&addr2)? {
                    anyhow::bail!("no account {addr2}");
                }
                let held = crate::containment::suspend(
                    &store,
                    &addr2,
                    &reason,
                    &format!("by {who} in the console"),
                    now,
                )?;
                Ok(format!(
                    "suspended {addr2}; {held} waiting recipient(s) held"
                ))
            })
            .await
        }
        "resume" => {
            let what = if arg("held") == "delete" {
                crate::containment::HeldMail::Delete
            } else {
                crate::containment::HeldMail::Release
            };
            let verb = if matches!(what, crate::containment::HeldMail::Delete) {
                "deleted"
            } else {
                "released"
            };
            blocking(move || {
                let n = crate::containment::resume(&store, &addr2, what, now)?;
                Ok(format!(
                    "{addr2} is active again; {n} held recipient(s) {verb}"
                ))
            })
            .await
        }
        "alias-add" => {
            let al = arg("address");
            blocking(move || {
                Ok(format!(
                    "{addr2} may now send as {}",
                    accounts.alias_add(&addr2, &al)?
                ))
            })
            .await
        }
        "alias-remove" => {
            let al = arg("address");
            blocking(move || {
                Ok(format!(
                    "{addr2} may no longer send as {}",
                    accounts.alias_remove(&addr2, &al)?
                ))
            })
            .await
        }
        "password" => {
            let pw = crate::accounts::generate_password();
            let pw2 = pw.clone();
            if let Err(r) =
                blocking(move || Ok(accounts.set_password(&addr2, pw2.as_bytes())?)).await
            {
                return r;
            }
            c.sessions.end_all(&addr);
            tracing::info!(event = "console_action", user = %a.session.account, done = %format!("password reset for {addr}"));
            return account_page(&c, &a, &addr, Some(pw.to_string())).await;
        }
        _ => return not_found(&a, "/accounts", "no such action"),
    };
    match result {
        Ok(msg) => {
            if what == "suspend" {
                c.sessions.end_all(&addr);
            }
            done(&c, &a, &page, msg)
        }
        Err(r) => r,
    }
}

// ------------------------------------------------------------------------------------- queue

pub async fn queue(State(c): C, h: HeaderMap) -> Response {
    let a = admin!(c, h);
    let store = c.store.clone();
    let (all, total) =
        tryr!(blocking(move || Ok(crate::queue::admin::list_recent(&store, MAX_ROWS)?)).await);
    let body = html! {
        p { (total) " message(s)" @if total as usize > all.len() { ", the newest " (all.len()) " shown" } }
        table id="queue" { tr { th { "id" } th { "arrived" } th { "sender" } th { "size" } th { "recipients" } }
            @for m in &all {
                tr {
                    td { a href=(format!("/queue/{}", seg(&m.id))) { (m.id) } }
                    td { (when(m.created)) }
                    td { (if m.sender.is_empty() { "<>" } else { &m.sender }) }
                    td { (m.size) }
                    td { @for r in &m.recipients { (r.address) " (" (r.status) ") " } }
                }
            }
        }
    };
    render(&a, "Queue", "/queue", body)
}

pub async fn queue_message(State(c): C, h: HeaderMap, axum::extract::Path(id): Seg) -> Response {
    let a = admin!(c, h);
    let (store, id2) = (c.store.clone(), id.clone());
    let Some(m) = tryr!(blocking(move || Ok(crate::queue::admin::show(&store, &id2)?)).await)
    else {
        return not_found(&a, "/queue", &format!("no queued message {id}"));
    };
    let csrf = &a.session.csrf;
    let base = format!("/queue/{}", seg(&m.id));
    let body = html! {
        table { tr { th { "arrived" } td { (when(m.created)) } } tr { th { "sender" } td { "<" (m.sender) ">" } } tr { th { "size" } td { (m.size) } } }
        table id="recipients" { tr { th { "recipient" } th { "route" } th { "state" } th { "attempts" } th { "next attempt" } th { "last reply" } }
            @for r in &m.recipients {
                tr { td { (r.address) } td { (r.route) } td { (r.status) } td { (r.attempts) }
                     td { @if r.status == "deferred" { (when(r.next_attempt)) } }
                     td { (r.last_reply.as_deref().unwrap_or("")) } }
            }
        }
        (action(&format!("{base}/retry"), csrf, "Retry now", &[])) " "
        (action(&format!("{base}/hold"), csrf, "Hold", &[])) " "
        (action(&format!("{base}/release"), csrf, "Release", &[])) " "
        (action(&format!("{base}/delete"), csrf, "Delete", &[]))
    };
    render(&a, &format!("Queued message {}", m.id), "/queue", body)
}

pub async fn queue_action(
    State(c): C,
    h: HeaderMap,
    axum::extract::Path((id, what)): Seg2,
    axum::extract::Form(f): Fields,
) -> Response {
    use crate::queue::admin;
    let a = admin_post!(c, h, f, &format!("queue {what}"));
    let (store, data_dir, id2) = (
        c.store.clone(),
        c.shared.config.data_dir.clone(),
        id.clone(),
    );
    let page = format!("/queue/{}", seg(&id));
    let r = match what.as_str() {
        "retry" => {
            blocking(move || {
                Ok(format!(
                    "{} deferred recipient(s) of {id2} due now",
                    admin::retry(&store, Some(&id2))?
                ))
            })
            .await
        }
        "hold" => {
            blocking(move || {
                Ok(format!(
                    "held {} recipient(s) of {id2}",
                    admin::hold(&store, &id2)?
                ))
            })
            .await
        }
        "release" => {
            blocking(move || {
                Ok(format!(
                    "released {} recipient(s) of {id2}",
                    admin::release(&store, &id2)?
                ))
            })
            .await
        }
        "delete" => {
            let r = blocking(move || {
                Ok(if admin::delete(&store, &data_dir, &id2)? {
                    format!("deleted {id2}")
                } else {
                    format!("no queued message {id2}")
                })
            })
            .await;
            return match r {
                Ok(msg) => done(&c, &a, "/queue", msg),
                Err(r) => r,
            };
        }
        _ => return not_found(&a, "/queue", "no such action"),
    };
    match r {
        Ok(msg) => done(&c, &a, &page, msg),
        Err(r) => r,
    }
}

// -------------------------------------------------------------------------------- quarantine

pub async fn quarantine(State(c): C, h: HeaderMap) -> Response {
    let a = admin!(c, h);
    let store = c.store.clone();
    let (all, total) = tryr!(
        blocking(move || Ok((
            crate::quarantine::list_recent(&store, MAX_ROWS)?,
            crate::quarantine::waiting(&store)?
        )))
        .await
    );
    let body = html! {
        p { (total) " message(s) waiting" @if total as usize > all.len() { ", the newest " (all.len()) " shown" } }
        table id="quarantine" { tr { th { "id" } th { "arrived" } th { "score" } th { "from" } th { "to" } th { "subject" } th { "reasons" } }
            @for e in &all {
                tr {
                    td { a href=(format!("/quarantine/{}", seg(&e.id))) { (e.id) } }
                    td { (when(e.time)) }
                    td { (e.score) }
                    td { (e.sender) }
                    td { @for (r, _) in &e.rcpts { (r) " " } }
                    td.subject { (crate::header::decoded(&e.content, "Subject").unwrap_or_default()) }
                    td { (e.reasons) }
                }
            }
        }
    };
    render(&a, "Quarantine", "/quarantine", body)
}

pub async fn quarantined(State(c): C, h: HeaderMap, axum::extract::Path(id): Seg) -> Response {
    let a = admin!(c, h);
    let (store, id2) = (c.store.clone(), id.clone());
    let Some(e) = tryr!(blocking(move || Ok(crate::quarantine::get(&store, &id2)?)).await) else {
        return not_found(&a, "/quarantine", &format!("nothing in quarantine as {id}"));
    };
    // Headers decoded and the first text part as text (HTML turned to text): never the HTML.
    let text = crate::quarantine::render(&e.content);
    let csrf = &a.session.csrf;
    let base = format!("/quarantine/{}", seg(&e.id));
    let body = html! {
        table {
            tr { th { "from" } td id="q-from" { (crate::header::decoded(&e.content, "From").unwrap_or_default()) } }
            tr { th { "subject" } td id="q-subject" { (crate::header::decoded(&e.content, "Subject").unwrap_or_default()) } }
            tr { th { "envelope" } td { "<" (e.sender) "> → " @for (r, _) in &e.rcpts { (r) " " } } }
            tr { th { "score" } td { (e.score) " (" (e.reasons) ")" } }
        }
        form.inline method="post" action=(format!("{base}/release")) {
            input type="hidden" name="csrf" value=(csrf);
            label { input type="checkbox" name="learn_ham" value="1"; " and learn it as ham" } " "
            button type="submit" id="release" { "Release" }
        } " "
        (action(&format!("{base}/spam"), csrf, "Learn as spam and delete", &[])) " "
        (action(&format!("{base}/delete"), csrf, "Delete", &[]))
        h2 { "Message (as text)" }
        pre id="q-text" { (text) }
    };
    render(&a, &format!("Quarantined {}", e.id), "/quarantine", body)
}

pub async fn quarantine_action(
    State(c): C,
    h: HeaderMap,
    axum::extract::Path((id, what)): Seg2,
    axum::extract::Form(f): Fields,
) -> Response {
    use crate::quarantine as q;
    let a = admin_post!(c, h, f, &format!("quarantine {what}"));
    let (store, id2) = (c.store.clone(), id.clone());
    let learn_ham = f.contains_key("learn_ham");
    let r = match what.as_str() {
        "release" => {
            blocking(move || {
                Ok(if q::release_learning(&store, &id2, learn_ham)? {
                    format!(
                        "released {id2}{}; it is being delivered",
                        if learn_ham {
                            " and learnt it as ham"
                        } else {
                            ""
                        }
                    )
                } else {
                    format!("nothing in quarantine as {id2}")
                })
            })
            .await
        }
        "spam" => {
            blocking(move || {
                Ok(if q::learn_spam(&store, &id2)? {
                    format!("learnt {id2} as spam and deleted it")
                } else {
                    format!("nothing in quarantine as {id2}")
                })
            })
            .await
        }
        "delete" => {
            blocking(move || {
                Ok(if q::delete(&store, &id2)? {
                    format!("deleted {id2}")
                } else {
                    format!("nothing in quarantine as {id2}")
                })
            })
            .await
        }
        _ => return not_found(&a, "/quarantine", "no such action"),
    };
    match r {
        Ok(msg) => done(&c, &a, "/quarantine", msg),
        Err(r) => r,
    }
}

// ----------------------------------------------------------------------------------- domains

pub async fn domains(State(c): C, h: HeaderMap) -> Response {
    let a = admin!(c, h);
    let body = html! {
        ul id="domains" {
            @for d in &c.shared.config.domains {
                li { a href=(format!("/domains/{}", seg(d))) { (d) } }
            }
        }
    };
    render(&a, "Domains", "/domains", body)
}

pub async fn domain(State(c): C, h: HeaderMap, axum::extract::Path(domain): Seg) -> Response {
    let a = admin!(c, h);
    domain_page(&c, &a, &domain, false).await
}

/// The self-audit runs on request only: it makes DNS lookups and a relay attempt on our MX.
pub async fn domain_audit(
    State(c): C,
    h: HeaderMap,
    axum::extract::Path(domain): Seg,
    axum::extract::Form(f): Fields,
) -> Response {
    let a = admin_post!(c, h, f, "domain audit");
    domain_page(&c, &a, &domain, true).await
}

async fn domain_page(c: &super::Console, a: &Admin, domain: &str, audit: bool) -> Response {
    let cfg = c.shared.config.clone();
    let Some(domain) = cfg
        .domains
        .iter()
        .find(|d| d.eq_ignore_ascii_case(domain))
        .cloned()
    else {
        return not_found(a, "/domains", "not one of our domains");
    };
    let keyring =
        std::sync::Arc::new(crate::dkim::keys::Keyring::new(&cfg.data_dir).with_store(&c.store));
    let records = {
        let (cfg, domain, keyring) = (cfg.clone(), domain.clone(), keyring.clone());
        tryr!(blocking(move || Ok(crate::dns_records::records(&cfg, &keyring, &domain))).await)
    };
    let findings = if audit {
        let cx = crate::audit::Ctx {
            cfg: &cfg,
            dns: &c.shared.dns,
            keyring: &keyring,
            mx: c.mx,
            now: c.now(),
        };
        Some(crate::audit::run(&cx, Some(&domain)).await)
    } else {
        None
    };
    let body = html! {
        h2 { "Records to publish" }
        pre id="records" { (records) }
        h2 { "Self-audit" }
        p { "What an outside sender sees: live DNS, block lists, the certificate, and a relay attempt on our MX (as " code { "mailwarden audit --domain " (domain) } ")." }
        (action(&format!("/domains/{}/audit", seg(&domain)), &a.session.csrf, "Run the self-audit", &[]))
        @if let Some(f) = &findings { (findings_table(f)) }
    };
    render(a, &domain, "/domains", body)
}

pub fn findings_table(findings: &[crate::audit::Finding]) -> Markup {
    html! {
        table id="audit" { tr { th { "check" } th { "subject" } th { "result" } th { "detail" } th { "fix" } }
            @for f in findings {
                tr { td { (f.check) } td { (f.subject) } td class=(f.status.as_str()) { (f.status.as_str()) } td { (f.detail) } td { (f.fix) } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(super::network_of("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(super::network_of("2001:db8:1:2:3::4"), "2001:db8:1:2::/64");
        assert_eq!(super::network_of("junk"), "junk");
    }
}
