//! The fuzz targets: every parser that reads bytes a client, a sender's DNS or a remote server
//! controls. Besides "never panics", some assert properties that must hold for any input.

use crate::Target;
use mailwarden::checks::{authres, headers, spf};
use mailwarden::delivery::remote::client;
use mailwarden_proto::data::{BareLf, ChunkChecker, DataReader};
use mailwarden_proto::session::{Event, InBuf, Limits, Session, SessionConfig};
use mailwarden_proto::{address, command, replies, sasl};

pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "command",
            about: "the SMTP command-line parser",
            seeds: command_seeds,
            dict: COMMAND_DICT,
            max_len: 1024,
            run: command,
        },
        Target {
            name: "address",
            about: "paths, mailboxes and domains (RFC 5321 §4.1.2)",
            seeds: address_seeds,
            dict: ADDRESS_DICT,
            max_len: 1024,
            run: address,
        },
        Target {
            name: "data",
            about: "the DATA and BDAT readers, fed in chunks",
            seeds: data_seeds,
            dict: &["\r\n.\r\n", "\r\n..", "\n.\n", "\r.\r", ".\r\n", "\r\r\n"],
            max_len: 8192,
            run: data,
        },
        Target {
            name: "session",
            about: "the whole protocol core: commands, AUTH, DATA, BDAT, limits",
            seeds: session_seeds,
            dict: SESSION_DICT,
            max_len: 8192,
            run: session,
        },
        Target {
            name: "pop3",
            about: "the POP3 core: commands, STLS, SASL PLAIN, the listing, TOP and RETR's stuffing",
            seeds: pop3_seeds,
            dict: POP3_DICT,
            max_len: 8192,
            run: pop3,
        },
        Target {
            name: "sasl",
            about: "SASL PLAIN and LOGIN decoding",
            seeds: sasl_seeds,
            dict: &["=", "*", "AGFsaWNl", "AA==", "\0"],
            max_len: 4096,
            run: sasl,
        },
        Target {
            name: "headers",
            about: "the header splitter, the heuristics, link checks and classifier tokens",
            seeds: header_seeds,
            dict: HEADER_DICT,
            max_len: 65536,
            run: headers,
        },
        Target {
            name: "spf_record",
            about: "the SPF record parser (RFC 7208 §4.6, §7 macros)",
            seeds: spf_seeds,
            dict: SPF_DICT,
            max_len: 2048,
            run: spf_record,
        },
        Target {
            name: "authres",
            about: "the Authentication-Results scanner that removes forged results",
            seeds: authres_seeds,
            dict: &[
                "Authentication-Results:",
                "authentication-results :",
                "mx.example.test",
                "(comment)",
                "((nested))",
                ";",
                "\r\n\t",
            ],
            max_len: 16384,
            run: authres,
        },
        Target {
            name: "reply",
            about: "the outbound client's reply parser and EHLO keywords",
            seeds: reply_seeds,
            dict: &[
                "250-",
                "250 ",
                "550 5.1.1 ",
                "\r\n",
                "PIPELINING",
                "SIZE ",
                "STARTTLS",
            ],
            max_len: 16384,
            run: reply,
        },
    ]
}

fn lines(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

const COMMAND_DICT: &[&str] = &[
    "MAIL FROM:",
    "RCPT TO:",
    "EHLO ",
    "HELO ",
    "BDAT ",
    " LAST",
    "AUTH PLAIN ",
    "AUTH LOGIN",
    "STARTTLS",
    "SIZE=",
    "BODY=8BITMIME",
    "SMTPUTF8",
    "AUTH=<>",
    "<postmaster>",
    "<@a.test,@b.test:x@y.test>",
    "\"quoted local\"",
    "[IPv6:::1]",
    "[127.0.0.1]",
];

fn command_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "EHLO client.example.test",
        "HELO [127.0.0.1]",
        "MAIL FROM:<alice@example.test> SIZE=1000 BODY=8BITMIME SMTPUTF8",
        "MAIL FROM:<>",
        "RCPT TO:<bob@example.test>",
        "RCPT TO:<Postmaster>",
        "DATA",
        "BDAT 100 LAST",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
        "STARTTLS",
        "GET / HTTP/1.1",
        "MAIL FRO€:<a@b>",
    ])
}

fn command(data: &[u8]) {
    let _ = command::parse(data);
}

const ADDRESS_DICT: &[&str] = &[
    "<",
    ">",
    "@",
    "\"",
    "\\",
    "[IPv6:",
    "::",
    "[",
    "]",
    ":",
    ",@",
    "postmaster",
    ".",
    "-",
];

fn address_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "<alice@example.test>",
        "<\"a b\\\"c\"@example.test> SIZE=10",
        "<@relay.test,@other.test:bob@example.test>",
        "<x@[192.0.2.1]>",
        "<x@[IPv6:2001:db8::1]>",
        "<用户@例子.测试>",
        "<>",
        "<Postmaster>",
        "alice@example.test",
    ])
}

fn address(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    for utf8 in [false, true] {
        if let Ok((path, _rest)) = address::split_path(&s) {
            let _ = address::parse_reverse_path(path, utf8);
            if let Ok(address::ForwardPath::Mailbox(m)) = address::parse_forward_path(path, utf8) {
                // What we print we must read back as the same mailbox.
                let again = address::parse_forward_path(&format!("<{m}>"), utf8);
                assert_eq!(
                    again,
                    Ok(address::ForwardPath::Mailbox(m.clone())),
                    "round trip of {m}"
                );
                let _ = m.key();
            }
        }
        let _ = address::parse_mailbox(&s, utf8);
        let _ = address::domain(&s, utf8);
    }
}

fn data_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "\x05\x03Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\n",
        "\x00\x01line\nbare\rcr\r\n.\r\nMAIL FROM:<a@b>\r\n",
        "\x07\x10.\r\n",
        "\x02\x02a\r\n.\n.\r\n.\r\n",
    ])
}

/// Feed `input` to a fresh reader in pieces of the sizes `sizes` gives, keeping unconsumed
/// bytes for the next feed as the session's input buffer does.
fn feed_chunked(
    make: &dyn Fn() -> DataReader,
    input: &[u8],
    sizes: &mut dyn FnMut() -> usize,
) -> (usize, bool, Vec<u8>, mailwarden_proto::data::ContentFlags) {
    let mut r = make();
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut offered = 0;
    let mut consumed = 0;
    loop {
        let n = sizes().max(1);
        let next = (offered + n).min(input.len());
        pending.extend_from_slice(&input[offered..next]);
        offered = next;
        let (used, done) = r.feed(&pending, &mut out);
        assert!(used <= pending.len());
        consumed += used;
        pending.drain(..used);
        if done || offered == input.len() {
            if !done {
                // Whatever is still pending cannot finish the message either.
                let (used, done) = r.feed(&pending, &mut out);
                consumed += used;
                return (consumed, done, out, r.flags());
            }
            return (consumed, done, out, r.flags());
        }
    }
}

fn data(data: &[u8]) {
    let (ctl, body) = match data {
        [a, b, rest @ ..] => ((*a, *b), rest),
        _ => return,
    };
    let policy = if ctl.0 & 1 == 0 {
        BareLf::Reject
    } else {
        BareLf::Normalize
    };
    let max_line = 8 + (ctl.0 as usize >> 1);
    let max_size = 64 + 16 * ctl.1 as u64;
    let make = || DataReader::new(max_size, max_line, policy);
    let mut one = || usize::MAX;
    let whole = feed_chunked(&make, body, &mut one);
    let mut step = ctl.1 as usize % 7;
    let mut sizes = || {
        step = (step * 5 + 3) % 11;
        step + 1
    };
    let pieces = feed_chunked(&make, body, &mut sizes);
    // How the bytes arrive must not change where the message ends, its flags, or (when it
    // is kept at all) its content.
    assert_eq!(
        (whole.0, whole.1, whole.3),
        (pieces.0, pieces.1, pieces.3),
        "DATA ends or flags differ by chunking"
    );
    let kept = !(whole.3.too_big || whole.3.bare_line_ending && policy == BareLf::Reject);
    if kept {
        assert_eq!(whole.2, pieces.2, "DATA content differs by chunking");
    }

    let mut a = ChunkChecker::new(max_size, max_line, policy);
    let mut out_a = Vec::new();
    a.feed(body, &mut out_a);
    let fa = a.finish(&mut out_a);
    let mut b = ChunkChecker::new(max_size, max_line, policy);
    let mut out_b = Vec::new();
    for c in body.chunks(1 + ctl.1 as usize % 13) {
        b.feed(c, &mut out_b);
    }
    let fb = b.finish(&mut out_b);
    assert_eq!(fa, fb, "BDAT flags differ by chunking");
    if !(fa.too_big || fa.bare_line_ending && policy == BareLf::Reject) {
        assert_eq!(out_a, out_b, "BDAT content differs by chunking");
    }
}

const SESSION_DICT: &[&str] = &[
    "~",
    "EHLO c.test\r\n",
    "HELO c.test\r\n",
    "MAIL FROM:<a@b.test>\r\n",
    "MAIL FROM:<a@b.test> SMTPUTF8\r\n",
    "RCPT TO:<x@example.test>\r\n",
    "RCPT TO:<ü@example.test>\r\n",
    "DATA\r\n",
    "\r\n.\r\n",
    "BDAT 5\r\n",
    "BDAT 3 LAST\r\n",
    "BDAT 0 LAST\r\n",
    "BDAT 99999999999 LAST\r\n",
    "RSET\r\n",
    "NOOP\r\n",
    "QUIT\r\n",
    "STARTTLS\r\n",
    "AUTH PLAIN\r\n",
    "AUTH LOGIN\r\n",
    "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    "YWxpY2U=\r\n",
    "*\r\n",
    "GET / HTTP/1.1\r\n",
];

fn session_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "\x00EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        "\x01EHLO c.test\r\nSTARTTLS\r\nEHLO c.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nBDAT 5\r\nhello\r\nBDAT 0 LAST\r\n",
        "\x02EHLO c.test\r\nSTARTTLS\r\nEHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nRSET\r\nNOOP\r\n",
        "\x03HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n.\r\n",
    ])
}

/// Drive the protocol core with `data` (its first byte picks the listener's settings and how
/// input is split), answering every event as a permissive server would.
fn session(data: &[u8]) {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let cfg = SessionConfig {
        hostname: "mx.example.test".into(),
        limits: Limits {
            command_line: 512,
            auth_line: 12288,
            text_line: 1000,
            message_size: 4096,
            recipients: 5,
            errors: 10,
            junk_commands: 20,
            transactions: 5,
            auth_failures: 3,
        },
        tls_available: ctl & 1 == 0,
        tls_at_start: ctl & 2 != 0,
        auth_offered: ctl & 4 != 0,
        auth_required: ctl & 8 != 0,
        bare_lf: if ctl & 16 == 0 {
            BareLf::Reject
        } else {
            BareLf::Normalize
        },
        close_on_non_smtp: ctl & 32 != 0,
        grants: ctl & 40 == 40,
    };
    let chunk = 1 + (ctl as usize >> 6) * 37;
    let mut s = Session::new(cfg);
    let mut inbuf = InBuf::with_capacity(64);
    let mut body = Vec::new();
    let mut offered = 0;
    s.greet();
    // Every event either consumes input or answers a pending decision; a loop that does
    // neither for long is a hang.
    let mut idle = 0;
    let mut next = None;
    loop {
        idle += 1;
        assert!(idle < 10_000, "the session makes no progress");
        let ev = match next.take() {
            Some(ev) => ev,
            None => s.poll(&mut inbuf, &mut body),
        };
        match ev {
            Event::Grant => {
                let who = (offered % 2 == 0).then(|| "alice@example.test".to_string());
                next = Some(s.grant_decision(who));
            }
            Event::NeedInput => {
                if offered == input.len() {
                    break;
                }
                let next = (offered + chunk).min(input.len());
                inbuf.extend(&input[offered..next]);
                offered = next;
                idle = 0;
                // The disk fills (and frees) at whatever point a chunk ending in `~` says.
                s.set_storage_low(input[next - 1] == b'~');
            }
            Event::Refused { .. } => {}
            Event::Mail { .. } => {
                let _ = s.mail_decision(replies::MAIL_OK);
            }
            Event::Rcpt { to } => {
                if to.to_string().len().is_multiple_of(3) {
                    let _ = s.rcpt_decision(replies::BAD_RECIPIENT);
                } else {
                    let _ = s.rcpt_decision(replies::RCPT_OK);
                }
            }
            Event::Auth { credentials, .. } => {
                if credentials.username.len().is_multiple_of(2) {
                    s.auth_succeeded(credentials.username.clone());
                } else {
                    let _ = s.auth_failed(replies::AUTH_FAILED);
                }
            }
            Event::StartTls { .. } => s.tls_started(),
            Event::Message { flags } => {
                body.clear();
                match s.content_refusal(&flags) {
                    Some((reply, _)) => s.message_decision(reply),
                    None => s.message_decision(replies::queued("Q1")),
                }
            }
            Event::Close => break,
        }
        check_replies(&s.take_output());
    }
    check_replies(&s.take_output());
}

const POP3_DICT: &[&str] = &[
    "USER alice@example.test\r\n",
    "PASS secret\r\n",
    "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
    "STLS\r\n",
    "CAPA\r\n",
    "LIST\r\n",
    "UIDL 1\r\n",
    "RETR 2\r\n",
    "TOP 1 3\r\n",
    "DELE 1\r\n",
    "RSET\r\n",
    "QUIT\r\n",
    "*\r\n",
];

fn pop3_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "\x00USER alice@example.test\r\nPASS secret\r\nLIST\r\nTOP 1 1\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n",
        "\x01STLS\r\nAUTH PLAIN\r\nAGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\nUIDL\r\nRSET\r\nSTAT\r\n",
        "\x02CAPA\r\nAUTH\r\nUSER x\r\nPASS y\r\nNOOP\r\n",
    ])
}

/// Drive the POP3 core with `data` (its first byte picks TLS, whether logins succeed and how
/// input is split), with a three-message maildrop whose contents the input also supplies;
/// every multi-line reply must end in `.` CRLF and every line must be CRLF-terminated.
fn pop3(data: &[u8]) {
    use mailwarden_proto::pop3::content::{SizeCounter, Stuffer, unstuff};
    use mailwarden_proto::pop3::{self as p, Entry};
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let cfg = p::Config {
        hostname: "pop.example.test".into(),
        limits: p::Limits {
            command_line: 64,
            auth_line: 256,
            errors: 8,
            commands: 50,
            auth_failures: 2,
        },
        tls_available: ctl & 1 == 0,
        tls_at_start: ctl & 2 != 0,
    };
    let chunk = 1 + (ctl as usize >> 4) * 13;
    let messages: Vec<&[u8]> = vec![input, b"Subject: x\n\n.\n..\n", b""];
    let mut s = p::Session::new(cfg);
    let mut inbuf = p::InBuf::with_capacity(64);
    let mut offered = 0;
    s.greet();
    let mut idle = 0;
    loop {
        idle += 1;
        assert!(idle < 10_000, "the POP3 session makes no progress");
        let mut out = s.take_output();
        match s.poll(&mut inbuf) {
            p::Event::NeedInput => {
                if offered == input.len() {
                    break;
                }
                let next = (offered + chunk).min(input.len());
                inbuf.extend(&input[offered..next]);
                offered = next;
                idle = 0;
            }
            p::Event::Refused { .. } | p::Event::Flush => {}
            p::Event::StartTls { .. } => s.tls_started(),
            p::Event::Quit { deleted } => {
                assert!(deleted.iter().all(|&i| i < messages.len()));
                s.update_done(deleted.len(), 0);
            }
            p::Event::Login { credentials, .. } => {
                if ctl & 4 == 0 && credentials.username.len() % 2 == 0 {
                    let entries = messages
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let mut n = SizeCounter::default();
                            n.push(m);
                            Entry {
                                size: n.finish(),
                                uid: format!("u{i}"),
                            }
                        })
                        .collect();
                    s.login_ok(entries);
                } else {
                    s.login_failed(p::replies::AUTH_FAILED);
                }
            }
            p::Event::Retrieve { index, top } => {
                s.retrieve_begin();
                out.extend(s.take_output());
                let mut st = Stuffer::new(top);
                let mut body = Vec::new();
                for c in messages[index].chunks(chunk) {
                    st.push(c, &mut body);
                }
                st.finish(&mut body);
                assert!(body.ends_with(b".\r\n"), "a message not terminated");
                // Unstuffed, it is what LIST announced.
                let mut n = SizeCounter::default();
                n.push(messages[index]);
                if top.is_none() {
                    let plain = unstuff(&body[..body.len() - 3]);
                    assert_eq!(plain.len() as u64, n.finish(), "LIST's size is not RETR's");
                }
                out.extend(body);
            }
            p::Event::Close => {
                out.extend(s.take_output());
                check_pop3(&out);
                break;
            }
        }
        out.extend(s.take_output());
        check_pop3(&out);
    }
}

/// POP3 output is CRLF-terminated lines, never a bare LF.
fn check_pop3(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.ends_with(b"\r\n"), "POP3 output not CRLF-terminated");
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "a bare LF in POP3 output");
        }
    }
}

/// Every reply line is `DDD` then space or hyphen, and ends with CRLF.
fn check_replies(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.ends_with(b"\r\n"), "output not CRLF-terminated");
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "bare LF in a reply");
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-' | b'\r'),
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

fn sasl_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=",
        "YWxpY2UAYWxpY2UAcHc=",
        "*",
        "=",
        "YWxpY2U=",
    ])
}

fn sasl(data: &[u8]) {
    if let Ok(d) = sasl::decode_response(data) {
        let _ = sasl::parse_plain(d.clone());
        let _ = sasl::utf8_username(d);
    }
    let _ = sasl::Mechanism::parse(&String::from_utf8_lossy(data));
}

const HEADER_DICT: &[&str] = &[
    "From: ",
    "To: ",
    "Date: ",
    "Message-ID: <",
    "Reply-To: ",
    "Received: from x by mx.example.test; ",
    "Subject: ",
    "Content-Type: multipart/mixed; boundary=\"b\"\r\n",
    "Content-Type: text/html\r\n",
    "Content-Transfer-Encoding: base64\r\n",
    "Content-Transfer-Encoding: quoted-printable\r\n",
    "\r\n--b\r\n",
    "\r\n--b--\r\n",
    "http://",
    "https://",
    "<a href=\"http://evil.test/\">",
    "</a>",
    "www.bank.test",
    "=?utf-8?b?",
    "?=",
    "\r\n\t",
    "\r\n\r\n",
    "[192.0.2.1]",
];

fn header_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@mail.sender.test>\r\nSubject: hi\r\n\r\nsee https://www.shop.test/a?b and http://192.0.2.7/\r\n",
        "From: \"ceo@bank.test\" <x@evil.test>\r\nContent-Type: text/html\r\n\r\n<a href=\"http://evil.test/x\">https://www.bank.test/login</a>\r\n",
        "From: a@b\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain http://x.test\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"http://y.test\">z</a>\r\n--b--\r\n",
        "From: \"Yessenia Lakeshia\"\r\nMessage-ID: <201105171916.8F06B8E1441DD3CA51BF4BA1@1f41un723>\r\nTo:\r\nSubject: =?utf-8?b?w6k=?= replica\r\n\r\nhttp://hotreplicaolympic.ru\r\n",
    ])
}

fn headers(data: &[u8]) {
    let p = headers::Parsed::with_defaults(data);
    let _ = headers::check(
        &p,
        1_795_435_200,
        "mx.example.test",
        data.len().is_multiple_of(2),
    );
    let (_, hosts) = headers::check_links(&p);
    for h in hosts {
        assert!(!h.is_empty());
    }
    let _ = mailwarden::classifier::tokens_of(&p);
    let end = mailwarden::header::end(data);
    assert!(end <= data.len());
    let _ = headers::tag_subject(data, end, "[SPAM]");
    let _ = mailwarden::records::header_value(data, "Subject");
    let h = mailwarden::checks::shape::count(data, 1000, 4096);
    // Stopped within a line of the cap, never past the end.
    assert!(h.bytes <= data.len());
}

const SPF_DICT: &[&str] = &[
    "v=spf1 ",
    "ip4:",
    "ip6:",
    "/24",
    "//64",
    "a:",
    "mx:",
    "include:",
    "exists:",
    "redirect=",
    "exp=",
    "ptr",
    "-all",
    "~all",
    "%{s}",
    "%{l1r-}",
    "%{ir}.%{v}._spf.%{d2}",
    "%%",
    "%_",
    "%-",
];

fn spf_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx include:_spf.example.test -all",
        "v=spf1 exists:%{ir}.%{l1r-}.%{d}._spf.example.test redirect=_spf.example.test",
        "v=spf1 a:mail.%{d2}/24//64 ~all exp=explain.%{d}",
    ])
}

fn spf_record(data: &[u8]) {
    let _ = spf::record_is_valid(&String::from_utf8_lossy(data));
}

fn authres_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "Received: x\r\nAuthentication-Results: MX.Example.Test;\r\n\tspf=pass smtp.mailfrom=a@b.test\r\nAuthentication-Results: other.test; dkim=pass\r\nSubject: hi\r\n\r\nbody\r\n",
        "authentication-results: (comment (nested)) mx.example.test 1; dmarc=pass\r\n\r\n",
    ])
}

fn authres(data: &[u8]) {
    if let Some(edit) = authres::strip_forged(data, "mx.example.test") {
        let out = edit.apply(data);
        assert!(
            out.len() < data.len(),
            "removing fields made the message longer"
        );
        assert_eq!(
            out[edit.head.len()..],
            data[edit.rest..],
            "the body changed"
        );
        // Only whole header fields go: what remains is still free of our forged results.
        assert_eq!(authres::strip_forged(&out, "mx.example.test"), None);
    }
}

fn reply_seeds() -> Vec<Vec<u8>> {
    lines(&[
        "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n",
        "550 5.1.1 <x@y.test>: no such user\r\n",
        "451-4.7.1 greylisted\r\n451 4.7.1 try later\r\n",
    ])
}

fn reply(data: &[u8]) {
    let mut r = client::RemoteReply {
        code: 0,
        lines: Vec::new(),
    };
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.len() > 4096 {
            break;
        }
        match client::reply_line(&mut r, line) {
            Ok(true) => {
                let _ = r.status();
                let _ = r.text();
                let _ = client::Extensions::parse(&r);
                r = client::RemoteReply {
                    code: 0,
                    lines: Vec::new(),
                };
            }
            Ok(false) => {}
            Err(_) => break,
        }
    }
}
