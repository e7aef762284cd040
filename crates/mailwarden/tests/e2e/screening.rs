//! Screening at the door, end to end: the real binary, clients playing different addresses in
//! 127.0.0.0/8, DNS lists, PTR and HELO names served by the loopback DNS fixture, and the
//! server's clock moved through `MAILWARDEN_TEST_CLOCK` for greylisting.

use crate::support::*;
use serde_json::Value;

pub(crate) const ZONES: &str = "
# DNS lists: .2 is on both block lists, .3 on one, .4 on both and on the allow list, .5 on
# bl1 and on bl2 with a code bl2 does not count.
2.0.0.127.bl1.test A 127.0.0.2
2.0.0.127.bl2.test A 127.0.0.2
3.0.0.127.bl1.test A 127.0.0.2
4.0.0.127.bl1.test A 127.0.0.2
4.0.0.127.bl2.test A 127.0.0.2
4.0.0.127.wl.test A 127.0.10.1
5.0.0.127.bl1.test A 127.0.0.2
5.0.0.127.bl2.test A 127.0.0.10
spammer.test.dbl.test A 127.0.1.2
# Reverse DNS: .7 confirms, .8 names a host elsewhere, .9 has no PTR.
7.0.0.127.in-addr.arpa PTR good.client.test
good.client.test A 127.0.0.7
8.0.0.127.in-addr.arpa PTR liar.client.test
liar.client.test A 192.0.2.1
# A sender whose outbound pool spans two /24s.
pool.test TXT v=spf1 ip4:127.0.40.0/24 ip4:127.0.41.0/24 -all
";

pub(crate) const LISTS: &str = r#"
[screening.dnsbl]
threshold = 1.0
domain_zones = [{ zone = "dbl.test", weight = 1.0 }]
[[screening.dnsbl.zones]]
zone = "bl1.test"
weight = 0.6
[[screening.dnsbl.zones]]
zone = "bl2.test"
weight = 0.6
codes = ["127.0.0.2"]
[[screening.dnsbl.zones]]
zone = "wl.test"
weight = -5.0
"#;

fn server(extra: &str) -> Server {
    let s = Server::start_with_zones(extra, ZONES);
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("bob@example.test", "bob-pw");
    s
}

/// One message over smtplib from `source`, as `from` to `to`.
fn send_from(s: &Server, source: &str, from: &str, to: &str) -> Value {
    smtplib(
        s.mx(),
        "plain",
        &["--source", source, "--from", from, "--to", to],
    )
}

/// EHLO `helo`, MAIL, RCPT from `source`; the RCPT reply.
fn rcpt_reply(s: &Server, source: &str, helo: &str, from: &str) -> String {
    let r = raw(
        s.mx(),
        false,
        Some(source),
        &[
            Step::Read,
            Step::Cmd(&format!("EHLO {helo}")),
            Step::Cmd(&format!("MAIL FROM:<{from}>")),
            Step::Cmd("RCPT TO:<alice@example.test>"),
            Step::Cmd("QUIT"),
        ],
    );
    r.reply(3).to_string()
}

#[test]
fn an_early_talker_is_refused_and_a_patient_client_is_remembered() {
    let s = server("[screening.pregreet]\nmode = \"enforce\"\nwait = \"700ms\"\n");
    // Speaks at once, before the greeting's last line.
    let early = raw(
        s.mx(),
        false,
        Some("127.0.0.1"),
        &[Step::Send("EHLO eager.test\r\n"), Step::UntilClose],
    );
    let all = early.replies.join("\n");
    assert!(all.starts_with("220-mx.example.test"), "{all}");
    assert!(all.contains("554 5.5.1 Protocol error"), "{all}");
    assert!(early.closed);
    s.wait_log(&[
        "event=\"screen\"",
        "reason=\"early_talker\"",
        "action=\"reject\"",
    ]);
    assert!(
        s.metrics().contains(
            "mailwarden_screen_total{check=\"pregreet\",reason=\"early_talker\",action=\"reject\"} 1"
        ),
        "{}",
        s.metrics()
    );

    // Waits for the whole banner, then sends: gets in, and is remembered in the store.
    let patient = raw(
        s.mx(),
        false,
        Some("127.0.0.2"),
        &[
            Step::Read,
            Step::Cmd("EHLO patient.test"),
            Step::Cmd("QUIT"),
        ],
    );
    assert_eq!(
        patient.reply(0),
        "220-mx.example.test ESMTP mailwarden\n220 mx.example.test ESMTP mailwarden"
    );
    assert!(
        patient.reply(1).starts_with("250-"),
        "{:?}",
        patient.replies
    );
    assert_eq!(
        s.query_count("SELECT count(*) FROM screen_memory WHERE key = 'pregreet:127.0.0.2'"),
        1
    );
    let again = raw(
        s.mx(),
        false,
        Some("127.0.0.2"),
        &[Step::Read, Step::Cmd("QUIT")],
    );
    assert_eq!(again.reply(0), "220 mx.example.test ESMTP mailwarden");
    // The early talker was not remembered: it is tested again.
    let retry = raw(
        s.mx(),
        false,
        Some("127.0.0.1"),
        &[Step::Read, Step::Cmd("QUIT")],
    );
    assert!(retry.reply(0).starts_with("220-"), "{:?}", retry.replies);
}

#[test]
fn protocol_abuse_http_disconnects_and_unoffered_pipelining_is_refused() {
    let s = server("");
    let http = raw(
        s.mx(),
        false,
        None,
        &[Step::Read, Step::Cmd("GET / HTTP/1.1"), Step::UntilClose],
    );
    assert_eq!(http.reply(1), "554 5.5.1 Not an SMTP command; closing");
    assert!(http.closed);

    // After HELO (no PIPELINING offered) the client sends MAIL and RCPT in one go.
    let piped = raw(
        s.mx(),
        false,
        None,
        &[
            Step::Read,
            Step::Cmd("HELO client.test"),
            Step::Send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"),
            Step::Read,
            Step::Read,
            Step::Cmd("QUIT"),
        ],
    );
    assert!(
        piped.reply(2).starts_with("250 2.1.0"),
        "{:?}",
        piped.replies
    );
    assert!(
        piped.reply(3).starts_with("550 5.5.1"),
        "{:?}",
        piped.replies
    );
    let line = s.wait_log(&[
        "event=\"reject\"",
        "verb=\"RCPT\"",
        "unauthorized_pipelining",
    ]);
    for field in [
        "ip=127.0.0.1",
        "helo=\"client.test\"",
        "from=\"a@sender.test\"",
        "rcpt=\"alice@example.test\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    // The same dialogue, waiting for each reply, is fine.
    assert!(rcpt_reply(&s, "127.0.0.1", "client.test", "a@sender.test").starts_with("250"));
}

#[test]
fn dns_lists_add_up_filter_codes_and_an_allow_list_exempts() {
    let s = server(LISTS);
    let r = send_from(&s, "127.0.0.2", "a@sender.test", "alice@example.test");
    assert_eq!(r["code"], 554, "{r}");
    let text = r["message"].as_str().unwrap();
    assert!(text.starts_with("5.7.1"), "{text}");
    assert!(
        text.contains("[127.0.0.2] listed by bl1.test, bl2.test"),
        "{text}"
    );
    // One list is not enough; the allow list outweighs both; bl2's other code does not count.
    for ip in ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.1"] {
        let r = send_from(&s, ip, "a@sender.test", "alice@example.test");
        assert_eq!(r["ok"], true, "{ip}: {r}");
    }
    s.wait_log(&["reason=\"dnswl_listed\"", "ip=127.0.0.4"]);
    // A domain list for the sender domain.
    let r = send_from(&s, "127.0.0.6", "x@spammer.test", "alice@example.test");
    assert_eq!(r["code"], 554, "{r}");
    assert!(r["message"].as_str().unwrap().contains("dbl.test"), "{r}");
    assert_eq!(s.messages("alice@example.test").len(), 4);
}

#[test]
fn reverse_dns_and_helo_names_are_judged() {
    let s = server("[screening.rdns]\nmode = \"enforce\"\n[screening.helo]\nmode = \"enforce\"\n");
    let ok = "good.client.test";
    assert!(rcpt_reply(&s, "127.0.0.7", ok, "a@sender.test").starts_with("250"));
    assert!(rcpt_reply(&s, "127.0.0.7", "[127.0.0.7]", "a@sender.test").starts_with("250"));
    let cases = [
        ("127.0.0.8", ok, "550 5.7.25", "ptr_not_confirmed"),
        ("127.0.0.9", ok, "550 5.7.25", "no_ptr"),
        ("127.0.0.7", "localhost", "550 5.7.1", "helo_not_fqdn"),
        (
            "127.0.0.7",
            "[127.0.0.8]",
            "550 5.7.1",
            "helo_literal_mismatch",
        ),
        ("127.0.0.7", "[127.0.0.1]", "550 5.7.1", "helo_is_ours"),
        ("127.0.0.7", "mx.example.test", "550 5.7.1", "helo_is_ours"),
        (
            "127.0.0.7",
            "nowhere.client.test",
            "550 5.7.1",
            "helo_unresolvable",
        ),
        ("127.0.0.7", "bad_name!", "550 5.7.1", "helo_syntax"),
    ];
    for (ip, helo, code, reason) in cases {
        let reply = rcpt_reply(&s, ip, helo, "a@sender.test");
        assert!(reply.starts_with(code), "{ip} {helo}: {reply}");
        s.wait_log(&[
            "event=\"reject\"",
            &format!("ip={ip} "),
            &format!("helo=\"{helo}\""),
            reason,
        ]);
    }
}

#[test]
fn greylisting_delays_strangers_once_and_spares_known_networks_and_spf_senders() {
    let s = server("[screening.greylist]\nmode = \"enforce\"\nmin_delay = \"5m\"\n");
    let first = send_from(&s, "127.0.30.1", "a@far.test", "alice@example.test");
    assert_eq!(first["code"], 451, "{first}");
    assert!(
        first["message"].as_str().unwrap().starts_with("4.7.1"),
        "{first}"
    );
    s.advance_clock(60);
    let early = send_from(&s, "127.0.30.1", "a@far.test", "alice@example.test");
    assert_eq!(early["code"], 451, "too early: {early}");
    s.advance_clock(250);
    // The retry may come from another address of the same /24.
    let retry = send_from(&s, "127.0.30.9", "a@far.test", "alice@example.test");
    assert_eq!(retry["ok"], true, "{retry}");
    // The /24 passed: another sender and recipient from it pass at once.
    let later = send_from(&s, "127.0.30.50", "b@other.test", "bob@example.test");
    assert_eq!(later["ok"], true, "{later}");

    // A provider whose pool spans two /24s: SPF passes, so its domain stands in for the
    // network and the retry from the other /24 passes.
    let pool1 = send_from(&s, "127.0.40.1", "news@pool.test", "alice@example.test");
    assert_eq!(pool1["code"], 451, "{pool1}");
    s.advance_clock(301);
    let pool2 = send_from(&s, "127.0.41.1", "news@pool.test", "alice@example.test");
    assert_eq!(pool2["ok"], true, "{pool2}");
    // From now on its SPF-passing mail is exempt, whatever the address and recipient.
    let pool3 = send_from(&s, "127.0.40.77", "other@pool.test", "bob@example.test");
    assert_eq!(pool3["ok"], true, "{pool3}");
    assert_eq!(s.messages("alice@example.test").len(), 2);
    assert_eq!(s.messages("bob@example.test").len(), 2);
}

#[test]
fn observe_mode_logs_would_reject_and_lets_mail_through() {
    let lists = LISTS.replace("threshold = 1.0", "threshold = 1.0\nmode = \"observe\"");
    let s = server(&format!(
        "{lists}\n[screening.pregreet]\nmode = \"observe\"\nwait = \"500ms\"\n\
         [screening.helo]\nmode = \"observe\"\n[screening.rdns]\nmode = \"observe\"\n\
         [screening.greylist]\nmode = \"observe\"\n[screening.protocol]\nmode = \"observe\"\n"
    ));
    // Listed on both lists, no PTR, a bad HELO, talks early, pipelines without PIPELINING,
    // and is a greylisting stranger: every check would refuse it, none does.
    let r = raw(
        s.mx(),
        false,
        Some("127.0.0.2"),
        &[
            Step::Send("HELO localhost\r\n"),
            Step::Read,
            Step::Read,
            Step::Send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"),
            Step::Read,
            Step::Read,
            Step::Cmd("DATA"),
            Step::Cmd("Subject: observed\r\n\r\nhello\r\n."),
            Step::Cmd("QUIT"),
        ],
    );
    assert!(r.reply(3).starts_with("250 2.1.5"), "{:?}", r.replies);
    assert!(r.reply(5).starts_with("250 2.0.0"), "{:?}", r.replies);
    assert_eq!(s.wait_messages("alice@example.test", 1).len(), 1);
    for reason in [
        "early_talker",
        "dnsbl_score",
        "helo_not_fqdn",
        "no_ptr",
        "unauthorized_pipelining",
        "greylisted",
    ] {
        s.wait_log(&[
            "event=\"screen\"",
            &format!("reason=\"{reason}\""),
            "action=\"would_reject\"",
        ]);
    }
    assert!(s.log_lines(&["event=\"reject\""]).is_empty(), "{}", s.log());
}
