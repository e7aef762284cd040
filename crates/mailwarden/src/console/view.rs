//! The console's HTML: the page frame, tables, forms and the inline SVG charts.
//!
//! Security: everything is built with maud, whose `(value)` splices escape text and attribute
//! values; nothing here writes `PreEscaped` from data. The pages carry no script at all, and
//! the Content-Security-Policy (`console::headers`) forbids one, so even a missed escape could
//! not run code.

use maud::{DOCTYPE, Markup, html};

pub const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#dfe7f1;text-decoration:none}header a.on{color:#fff;font-weight:600}
header form{margin-left:auto}main{padding:1em 1.5em;max-width:1200px}
table{border-collapse:collapse;background:#fff;width:100%;margin:.5em 0 1.2em}
th,td{border-bottom:1px solid #e3e6ea;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef1f4}pre{background:#fff;padding:.8em;border:1px solid #e3e6ea;white-space:pre-wrap;word-break:break-all}
.card{display:inline-block;background:#fff;border:1px solid #e3e6ea;padding:.6em 1em;margin:.3em;min-width:8em}
.card b{display:block;font-size:1.6em}.flash{background:#e7f5e9;border:1px solid #9cd3a5;padding:.5em 1em}
.err{background:#fdecea;border:1px solid #f3a59d;padding:.5em 1em}
form.inline{display:inline}button{cursor:pointer}.legend span{margin-right:1em}
.pass{color:#1a7f37}.warn{color:#9a6700}.fail{color:#cf222e;font-weight:600}
"#;

/// The action colours of the charts, in stacking order.
pub const ACTIONS: [(&str, &str); 5] = [
    ("accept", "#2da44e"),
    ("junk", "#bf8700"),
    ("quarantine", "#8250df"),
    ("tempfail", "#0969da"),
    ("reject", "#cf222e"),
];

const NAV: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/decisions", "Decisions"),
    ("/accounts", "Accounts"),
    ("/queue", "Queue"),
    ("/quarantine", "Quarantine"),
    ("/domains", "Domains"),
];

/// A page for a logged-in admin: the menu, a logout button (with its CSRF token), a notice.
pub fn page(
    title: &str,
    active: &str,
    account: &str,
    csrf: &str,
    notice: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · mailwarden" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    strong { "mailwarden" }
                    @for (href, label) in NAV {
                        a href=(href) class=@if href == active { "on" } { (label) }
                    }
                    form method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        span { (account) " " }
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(n) = notice {
                        p.flash id="notice" { (n) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The login page.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · mailwarden" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                main {
                    h1 { "mailwarden console" }
                    @if let Some(e) = error { p.err id="error" { (e) } }
                    form method="post" action="/login" {
                        p { label { "Account " input type="email" name="username" id="username" autocomplete="username" required; } }
                        p { label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; } }
                        button type="submit" id="login" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A POST button with the session's CSRF token and optional extra fields.
pub fn action(url: &str, csrf: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="post" action=(url) {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
            button type="submit" { (label) }
        }
    }
}

/// A path segment, percent-encoded (ids and addresses go into URLs).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A stacked bar chart: one bar per bucket, one colour per action.
/// `counts[bucket][action]` follows [`ACTIONS`].
pub fn chart(
    id: &str,
    label: &str,
    counts: &[[u64; 5]],
    bucket_label: impl Fn(usize) -> String,
) -> Markup {
    const W: usize = 720;
    const H: usize = 160;
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let n = counts.len().max(1);
    let bw = W / n;
    let mut rects = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        let mut y = H as u64;
        for (k, (action, colour)) in ACTIONS.iter().enumerate() {
            if c[k] == 0 {
                continue;
            }
            let h = (c[k] * H as u64 / max).max(1);
            y = y.saturating_sub(h);
            let tip = format!("{}: {} {action}", bucket_label(i), c[k]);
            rects.push((i * bw + 1, y, h, *colour, tip));
        }
    }
    html! {
        figure id=(id) {
            figcaption { (label) " (highest bar: " (max) ")" }
            svg width=(W) height=(H + 2) viewBox=(format!("0 0 {W} {}", H + 2)) role="img" aria-label=(label) {
                @for (x, y, h, colour, tip) in &rects {
                    rect x=(x) y=(y) width=(bw.saturating_sub(2).max(1)) height=(h) fill=(colour) {
                        title { (tip) }
                    }
                }
                line x1="0" y1=(H + 1) x2=(W) y2=(H + 1) stroke="#999";
            }
            p.legend {
                @for (action, colour) in ACTIONS {
                    span { svg width="10" height="10" { rect width="10" height="10" fill=(colour); } " " (action) }
                }
            }
        }
    }
}

/// A Unix time for people.
pub fn when(t: i64) -> String {
    crate::util::rfc5322_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_from_mail_is_escaped_everywhere() {
        let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'";
        let m = page(
            evil,
            "/",
            evil,
            evil,
            Some(evil),
            html! { p { (evil) } a href=(evil) { "x" } },
        )
        .into_string();
        assert!(!m.contains("<script>alert"), "{m}");
        assert!(!m.contains("<img src=x"), "{m}");
        assert!(m.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!m.contains("\"'\""), "attribute quotes escaped");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("a@b.test"), "a@b.test");
        assert_eq!(seg("../x y"), "..%2Fx%20y");
        assert_eq!(seg("\"><script>"), "%22%3E%3Cscript%3E");
    }

    #[test]
    fn a_chart_has_a_bar_per_nonzero_count() {
        let m = chart("c", "t", &[[1, 0, 0, 0, 2], [0, 0, 0, 0, 0]], |i| {
            i.to_string()
        })
        .into_string();
        assert_eq!(m.matches("<rect x=").count(), 2, "{m}");
        assert!(m.contains("0: 2 reject"));
    }
}
