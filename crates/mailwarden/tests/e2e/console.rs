//! The administrator's view end to end: the web console in a real browser (headless Chromium
//! through selenium, `clients/console.py`), mail-client autoconfiguration fetched with curl,
//! `quickstart` into a temporary root, the self-audit against test zones that break each
//! check in turn, and the metrics an operator alerts on.

use crate::support::*;
use std::time::Duration;

const ADMIN: &str = "admin@example.test";
const ADMIN_PW: &str = "console-admin-pw";

/// The seed's spam (records.rs) with `subject` and a display-name-only From of `from`.
fn seed(subject: &str, from: &str) -> String {
    format!(
        "From: \"{from}\"\r\nMessage-ID: <201105171916.8F06B8E1441DD3CA51BF4BA1@1f41un723>\r\n\
         To:\r\nMIME-Version: 1.0\r\nDate: Tue, 17 May 2011 14:17:47 -0500\r\n\
         Subject: {subject}\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
         Exquisite Replica Bags\r\n\r\nhttp://hotreplicaolympic.ru\r\n"
    )
}

fn need_browser() {
    if !std::path::Path::new("/usr/bin/chromedriver").exists() {
        missing(
            "chromium and chromium-driver",
            "apt-get install chromium chromium-driver",
        );
    }
    if !run("python3", &["-c", "import selenium"], None)
        .status
        .success()
    {
        missing("selenium", "python3 -m pip install selenium");
    }
}

/// A server with the console's admin account, and `extra` config.
fn with_admin(extra: &str) -> Server {
    let s = Server::start(extra);
    s.cli_ok(
        &["user", "add", ADMIN, "--password-stdin", "--admin"],
        Some(&format!("{ADMIN_PW}\n")),
    );
    s
}

/// The status code curl gets for `path` on the console, with `extra` arguments.
fn http_code(s: &Server, path: &str, extra: &[&str]) -> String {
    let url = format!("http://{}{path}", s.ports["admin"]);
    let mut args = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    String::from_utf8(run_ok("curl", &args, None)).unwrap()
}

#[test]
fn an_admin_works_the_console_in_a_real_browser() {
    need_browser();
    let s = with_admin("[scoring]\nquarantine = 4.0\n");
    s.add_user("alice@example.test", "pw");

    // A message refused at RCPT, and two held in quarantine: one plain, one whose Subject
    // and From carry markup.
    let r = smtplib(
        s.mx(),
        "plain",
        &["--from", "spammer@bad.test", "--to", "nobody@example.test"],
    );
    assert_eq!(r["ok"], false, "{r}");
    s.search_records(&["--sender", "spammer@bad.test"]);
    for (subject, from) in [
        ("Exquisite Replica Bags", "Yessenia Lakeshia"),
        (
            "XSS-<script>alert('pwned')</script> Exquisite <img src=x onerror=\"alert('pwned2')\">",
            "<img src=x onerror=alert('pwned-from')>",
        ),
    ] {
        let r = smtplib_stdin(
            s.mx(),
            "plain",
            &[
                "--raw",
                "--from",
                "x@replica.test",
                "--to",
                "alice@example.test",
            ],
            Some(seed(subject, from).as_bytes()),
        );
        assert_eq!(r["ok"], true, "held, not refused: {r}");
    }
    assert_eq!(s.query_count("SELECT count(*) FROM quarantine"), 2);

    let shots = tempfile::tempdir().unwrap();
    // MAILWARDEN_SCREENSHOTS=docs/img keeps them (the README shows them).
    let keep = std::env::var("MAILWARDEN_SCREENSHOTS").ok();
    let shot_dir = keep
        .clone()
        .unwrap_or_else(|| shots.path().display().to_string());
    let url = format!("http://{}", s.ports["admin"]);
    let client = clients_dir().join("console.py");
    let out = run(
        "python3",
        &[
            client.to_str().unwrap(),
            "--url",
            &url,
            "--user",
            ADMIN,
            "--password",
            ADMIN_PW,
            "--sender",
            "spammer@bad.test",
            "--account",
            "alice@example.test",
            "--release-subject",
            "Exquisite",
            "--xss-marker",
            "XSS-",
            "--screenshots",
            &shot_dir,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "console.py: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let saw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the browser saw: {saw:#}");

    // Logging in: the wrong password is refused, the right one lands on the overview.
    assert_eq!(saw["redirected_to_login"], true, "{saw}");
    assert_eq!(saw["wrong_password_error"], "Wrong account or password.");
    assert!(
        saw["wrong_password_url"]
            .as_str()
            .unwrap()
            .ends_with("/login")
    );
    assert_eq!(saw["after_login_title"], "Overview · mailwarden");
    assert_eq!(saw["cookie_httponly"], true);
    assert_eq!(saw["cookie_samesite"], "Strict");
    assert_eq!(saw["overview_has_chart"], true);
    assert_eq!(saw["overview_quarantine_today"], "2");
    assert_ne!(saw["overview_reject_today"], "0");
    s.wait_log(&["event=\"console_login_refused\"", "reason=\"invalid\""]);

    // The refused message, found by its sender, explained as `explain ID` explains it.
    assert!(saw["decisions_found"].as_u64().unwrap() >= 1, "{saw}");
    let explain = saw["explain"].as_str().unwrap();
    let rec = &s.search_records(&["--sender", "spammer@bad.test"])[0];
    let id = rec["id"].as_str().unwrap();
    let cli = s.cli_ok(&["explain", id], None);
    assert!(explain.starts_with(&format!("{id} REJECT")), "{explain}");
    assert_eq!(
        explain.trim(),
        cli.trim(),
        "the console shows explain's text"
    );

    // Suspend, then resume.
    assert_eq!(saw["state_before"], "active");
    assert_eq!(saw["state_suspended"], "suspended");
    assert!(
        saw["suspend_notice"]
            .as_str()
            .unwrap()
            .contains("suspended alice@example.test")
    );
    assert_eq!(saw["state_resumed"], "active");
    let status = s.cli_ok(&["user", "status", "alice@example.test"], None);
    assert!(status.contains("state:    active"), "{status}");
    s.wait_log(&["event=\"console_action\"", "suspended alice@example.test"]);

    // Domains: the same records as `dns records`, and the audit's findings when asked.
    let records = s.cli_ok(&["dns", "records", "example.test"], None);
    assert_eq!(
        saw["domain_records"].as_str().unwrap().trim(),
        records.trim()
    );
    let rows = saw["audit_rows"].as_array().unwrap();
    let checks: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    for c in ["mx", "spf", "dmarc", "certificate", "relay"] {
        assert!(
            checks.contains(&c),
            "{c} missing from the console's audit: {rows:?}"
        );
    }
    // The test DNS knows nothing of example.test: no MX is a failure, and our MX relays
    // for nobody.
    assert!(
        rows.iter().any(|r| r[0] == "mx" && r[2] == "fail"),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r[0] == "relay" && r[2] == "pass"),
        "{rows:?}"
    );

    // The markup in Subject and From shows as text, and nothing of it runs or loads.
    assert!(
        saw["xss_subject_text"]
            .as_str()
            .unwrap()
            .contains("<script>alert('pwned')</script>"),
        "{saw}"
    );
    assert!(
        saw["xss_from_text"]
            .as_str()
            .unwrap()
            .contains("<img src=x onerror="),
        "{saw}"
    );
    assert_eq!(saw["xss_page_imgs"], 0);
    assert_eq!(saw["xss_page_scripts"], 0);
    assert_eq!(saw["list_imgs"], 0);
    assert_eq!(saw["list_scripts_in_body"], 0);
    assert_eq!(saw["list_title"], "Quarantine · mailwarden");
    assert_eq!(
        saw["list_subject_children"], 0,
        "no element made of a subject"
    );
    assert_eq!(
        saw["xss_subject_children"], 0,
        "no element made of the subject"
    );
    let html = saw["xss_subject_html"].as_str().unwrap();
    assert!(
        html.contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("&lt;img src=x onerror="), "{html}");
    assert_eq!(saw["xss_alert"], false);
    assert!(
        saw["xss_title"]
            .as_str()
            .unwrap()
            .starts_with("Quarantined "),
        "{saw}"
    );

    // Without its CSRF token the release is refused; with it, the message is delivered.
    let refused = saw["no_csrf_page"].as_str().unwrap();
    assert!(refused.contains("no valid CSRF token"), "{refused}");
    s.wait_log(&["event=\"console_csrf_refused\"", "quarantine release"]);
    assert!(
        saw["release_notice"]
            .as_str()
            .unwrap()
            .contains("learnt it as ham"),
        "{saw}"
    );
    let inbox = s.wait_messages("alice@example.test", 1);
    assert!(
        inbox[0].contains("Subject: Exquisite Replica Bags"),
        "{}",
        inbox[0]
    );
    assert_eq!(
        s.query_count("SELECT value FROM bayes_meta WHERE key = 'ham_messages'"),
        1
    );
    assert_eq!(
        s.query_count("SELECT count(*) FROM quarantine WHERE released = 0"),
        1,
        "the marked-up one is still held"
    );
    for f in ["console-overview.png", "console-explain.png"] {
        let p = std::path::Path::new(&shot_dir).join(f);
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{p:?}"
        );
    }
}

#[test]
fn console_logins_count_with_auth_failures_and_post_needs_a_session_and_token() {
    let s = with_admin("[containment]\nauth_failures_per_ip = 3\n");
    s.add_user("bob@example.test", "bob-pw");
    let post = |path: &str, body: &str| http_code(&s, path, &["-d", body]);
    // A mail account that is not an admin: the right password does not open the console.
    assert_eq!(
        post("/login", "username=bob%40example.test&password=bob-pw"),
        "401"
    );
    // No session: a POST is sent to the login page, nothing is done.
    assert_eq!(post("/queue/x/delete", "csrf=x"), "303");
    // Failed logins block the address for AUTH as well.
    for _ in 0..4 {
        post("/login", "username=admin%40example.test&password=wrong");
    }
    s.wait_log(&["event=\"auth_blocked\"", "listener=\"admin\""]);
    let r = submit(&s, "bob@example.test", "bob-pw", "bob@example.test", &[]);
    assert_eq!(r["ok"], false, "SMTP AUTH from the blocked address: {r}");
    assert_eq!(
        post(
            "/login",
            &format!("username=admin%40example.test&password={ADMIN_PW}")
        ),
        "401",
        "blocked, even with the right password"
    );
}

#[test]
fn console_sessions_end_with_the_admin_right_and_foreign_requests_are_refused() {
    let s = with_admin("");
    let jar = s.dir.path().join("cookies");
    let curl = |extra: &[&str], path: &str| http_code(&s, path, extra);
    let j = jar.to_str().unwrap();
    let creds = format!("username=admin%40example.test&password={ADMIN_PW}");
    // A login posted by another site's page: refused before the password is even looked at.
    assert_eq!(
        curl(&["-H", "Origin: http://evil.test", "-d", &creds], "/login"),
        "403"
    );
    assert_eq!(
        curl(
            &["-H", "Sec-Fetch-Site: cross-site", "-d", &creds],
            "/login"
        ),
        "403"
    );
    s.wait_log(&["event=\"console_request_refused\"", "reason=\"cross_site\""]);
    // A page asked for under another name (DNS rebinding): refused.
    assert_eq!(curl(&["-H", "Host: evil.test"], "/login"), "403");
    // Logged in, the overview answers.
    assert_eq!(curl(&["-c", j, "-d", &creds], "/login"), "303");
    assert_eq!(curl(&["-b", j], "/"), "200");
    // Suspended from the CLI: the session ends at its next request.
    s.cli_ok(&["user", "suspend", ADMIN], None);
    assert_eq!(curl(&["-b", j], "/"), "303", "back to the login page");
    s.wait_log(&["event=\"console_session_ended\""]);
    s.cli_ok(&["user", "resume", ADMIN], None);
    assert_eq!(curl(&["-c", j, "-d", &creds], "/login"), "303");
    assert_eq!(curl(&["-b", j], "/"), "200");
    // The password changed elsewhere: the session ends too.
    s.cli_ok(
        &["user", "passwd", ADMIN, "--password-stdin"],
        Some("another-admin-pw\n"),
    );
    assert_eq!(curl(&["-b", j], "/"), "303");
    // Removed and made again: the new account is no admin.
    s.cli_ok(&["user", "remove", ADMIN], None);
    s.add_user(ADMIN, ADMIN_PW);
    assert_eq!(curl(&["-c", j, "-d", &creds], "/login"), "401");
}

#[test]
fn mail_clients_configure_themselves() {
    // listen.pop3s is on (as in every e2e server): our POP3 is announced on 995, SSL/TLS.
    let s = Server::start(
        "[listen]\nautoconfig = \"127.0.0.1:0\"\n[autoconfig]\nimap = \"imap.example.test:993\"\n",
    );
    let base = format!("http://{}", s.ports["autoconfig"]);
    let dir = tempfile::tempdir().unwrap();
    let xsd = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/autoconfig/config-v1.1.xsd");
    for path in [
        "/mail/config-v1.1.xml?emailaddress=alice%40example.test".to_string(),
        "/.well-known/autoconfig/mail/config-v1.1.xml".to_string(),
    ] {
        let file = dir.path().join("config.xml");
        let mut args = vec!["-sSf", "--max-time", "10", "-o", file.to_str().unwrap()];
        let url = format!("{base}{path}");
        if path.starts_with("/.well-known") {
            args.extend(["-H", "Host: autoconfig.example.test"]);
        }
        args.push(&url);
        run_ok("curl", &args, None);
        let v = run(
            "xmllint",
            &[
                "--noout",
                "--schema",
                xsd.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            v.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        let check = r#"
import sys, xml.etree.ElementTree as ET
p = ET.parse(sys.argv[1]).getroot().find("emailProvider")
out = [(s.tag, s.get("type"), s.findtext("port"), s.findtext("socketType"), s.findtext("username"), s.findtext("authentication"), s.findtext("hostname")) for s in p if s.tag.endswith("Server")]
print(repr(out))
"#;
        let got = String::from_utf8(run_ok(
            "python3",
            &["-c", check, file.to_str().unwrap()],
            None,
        ))
        .unwrap();
        assert_eq!(
            got.trim(),
            "[('incomingServer', 'imap', '993', 'SSL', '%EMAILADDRESS%', 'password-cleartext', 'imap.example.test'), \
             ('incomingServer', 'pop3', '995', 'SSL', '%EMAILADDRESS%', 'password-cleartext', 'mx.example.test'), \
             ('outgoingServer', 'smtp', '465', 'SSL', '%EMAILADDRESS%', 'password-cleartext', 'mx.example.test'), \
             ('outgoingServer', 'smtp', '587', 'STARTTLS', '%EMAILADDRESS%', 'password-cleartext', 'mx.example.test')]",
            "{path}"
        );
    }
    // Not our domain: nothing.
    let code = run_ok(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/mail/config-v1.1.xml?emailaddress=a%40other.test"),
        ],
        None,
    );
    assert_eq!(code, b"404");

    // Autodiscover (POX): the request's address comes back as the login name.
    let req = "<?xml version=\"1.0\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>alice@example.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
    let body = run_ok(
        "curl",
        &[
            "-sSf",
            "--max-time",
            "10",
            "-H",
            "Content-Type: text/xml",
            "--data-binary",
            "@-",
            &format!("{base}/autodiscover/autodiscover.xml"),
        ],
        Some(req),
    );
    let check = r#"
import sys, xml.etree.ElementTree as ET
ns = {"a": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006", "o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
root = ET.fromstring(sys.stdin.read())
acc = root.find("o:Response/o:Account", ns)
assert acc.findtext("o:Action", namespaces=ns) == "settings"
print(repr([(p.findtext("o:Type", namespaces=ns), p.findtext("o:Port", namespaces=ns), p.findtext("o:SSL", namespaces=ns), p.findtext("o:Encryption", namespaces=ns), p.findtext("o:LoginName", namespaces=ns)) for p in acc.findall("o:Protocol", ns)]))
"#;
    let got = String::from_utf8(run_ok(
        "python3",
        &["-c", check],
        Some(&String::from_utf8(body).unwrap()),
    ))
    .unwrap();
    assert_eq!(
        got.trim(),
        "[('IMAP', '993', 'on', 'SSL', 'alice@example.test'), ('POP3', '995', 'on', 'SSL', 'alice@example.test'), ('SMTP', '465', 'on', 'SSL', 'alice@example.test'), ('SMTP', '587', 'on', 'TLS', 'alice@example.test')]"
    );
    // An entity-laden body is not parsed as XML: it has no address, so 400.
    let bomb = "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><Autodiscover><Request><EMailAddress>&a;</EMailAddress></Request></Autodiscover>";
    let code = run_ok(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "@-",
            &format!("{base}/autodiscover/autodiscover.xml"),
        ],
        Some(bomb),
    );
    assert_eq!(code, b"400");
    // The SRV records of RFC 6186 come with the domain's others.
    let records = s.cli_ok(&["dns", "records", "example.test"], None);
    assert!(
        records.contains("_submissions._tcp.example.test. IN SRV 0 1 465 mx.example.test."),
        "{records}"
    );
    assert!(
        records.contains("_submission._tcp.example.test. IN SRV 0 1 587 mx.example.test."),
        "{records}"
    );
    assert!(
        records.contains("autoconfig.example.test. IN CNAME mx.example.test."),
        "{records}"
    );
}

#[test]
fn quickstart_writes_a_config_a_unit_keys_and_records_and_never_overwrites() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let out = run_ok(
        BIN,
        &[
            "quickstart",
            "admin@example.org",
            "--hostname",
            "mx.example.org",
            "--root",
            r,
        ],
        None,
    );
    let out = String::from_utf8(out).unwrap();
    let cfg = root.path().join("etc/mailwarden/mailwarden.toml");
    let unit = root.path().join("etc/systemd/system/mailwarden.service");
    // The password is printed once, and it logs in.
    let pw = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(pw.len() >= 16, "{pw}");
    // The config is valid (`config show` loads it), production-shaped, with production paths.
    let shown = String::from_utf8(run_ok(
        BIN,
        &["config", "show", "-c", cfg.to_str().unwrap()],
        None,
    ))
    .unwrap();
    for want in [
        "mx = \"0.0.0.0:25\"",
        "submission = \"0.0.0.0:587\"",
        "submissions = \"0.0.0.0:465\"",
        "data_dir = \"/var/lib/mailwarden\"",
        "run_as_user = \"mailwarden\"",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for want in [
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "User=mailwarden",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/mailwarden",
    ] {
        assert!(unit_text.contains(want), "{want}: {unit_text}");
    }
    if std::path::Path::new("/usr/bin/systemd-analyze").exists() {
        let v = run("systemd-analyze", &["verify", unit.to_str().unwrap()], None);
        assert!(
            v.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    } else {
        eprintln!("systemd-analyze is not installed: the unit's syntax was not verified");
    }
    // The records printed match the keys stored: the same as `dns records` on the result.
    let mut local: toml::Table = std::fs::read_to_string(&cfg).unwrap().parse().unwrap();
    let data = root.path().join("var/lib/mailwarden");
    local.insert(
        "data_dir".into(),
        toml::Value::String(data.display().to_string()),
    );
    let local_cfg = root.path().join("local.toml");
    std::fs::write(&local_cfg, toml::to_string(&local).unwrap()).unwrap();
    let records = String::from_utf8(run_ok(
        BIN,
        &[
            "dns",
            "records",
            "example.org",
            "-c",
            local_cfg.to_str().unwrap(),
        ],
        None,
    ))
    .unwrap();
    let dkim: Vec<&str> = records
        .lines()
        .filter(|l| l.contains("._domainkey."))
        .collect();
    assert_eq!(dkim.len(), 2, "{records}");
    for l in &dkim {
        assert!(out.contains(l), "quickstart printed {l}");
    }
    assert!(
        out.contains("example.org. IN MX 10 mx.example.org."),
        "{out}"
    );
    // The admin account exists, is an admin, and its password is the one printed.
    let users = String::from_utf8(run_ok(
        BIN,
        &["user", "list", "-c", local_cfg.to_str().unwrap()],
        None,
    ))
    .unwrap();
    assert_eq!(users.trim(), "admin@example.org");
    let c = rusqlite::Connection::open(data.join("mailwarden.db")).unwrap();
    let admins: i64 = c
        .query_row(
            "SELECT count(*) FROM admins WHERE address = 'admin@example.org'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(admins, 1);
    let hash: String = c
        .query_row("SELECT password_hash FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // The printed password opens the console of a server on that data directory.
    let mut serve_cfg = local.clone();
    serve_cfg.insert("run_as_user".into(), toml::Value::String(String::new()));
    let listen = serve_cfg.get_mut("listen").unwrap().as_table_mut().unwrap();
    for k in ["mx", "submission", "submissions", "metrics", "admin"] {
        listen.insert(k.into(), toml::Value::String("127.0.0.1:0".into()));
    }
    let serve_path = root.path().join("serve.toml");
    std::fs::write(&serve_path, toml::to_string(&serve_cfg).unwrap()).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "-c", serve_path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let admin = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("listening admin ")
                    .map(|r| r.split_whitespace().next().unwrap().to_string())
            })
            .expect("the console's address");
        // Read the rest, or the server's next line to stdout would meet a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        found
    };
    let login = |pw: &str| {
        let body = format!("username=admin%40example.org&password={pw}");
        let url = format!("http://{admin}/login");
        String::from_utf8(run_ok(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                &body,
                &url,
            ],
            None,
        ))
        .unwrap()
    };
    assert_eq!(login("not-it"), "401");
    assert_eq!(login(pw), "303", "the printed password logs in");
    let _ = child.kill();
    let _ = child.wait();

    // Never over an existing config.
    let before = std::fs::read(&cfg).unwrap();
    let again = run(BIN, &["quickstart", "other@example.net", "--root", r], None);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read(&cfg).unwrap(), before);
}

/// Findings of `audit --json` as (check, status) pairs, plus the whole text.
fn audit(s: &Server) -> (Vec<(String, String)>, String) {
    let out = s.cli(&["audit", "--json"], None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let found = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["check"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (found, text)
}

#[test]
fn the_audit_passes_a_correct_setup_and_names_each_broken_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_, chain, key) = test_ca(dir.path(), &["mx.example.test"]);
    let mut s = Server::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[audit]\naddresses = [\"192.0.2.10\"]\n\
         [[screening.dnsbl.zones]]\nzone = \"bl.test\"\n",
        chain.display(),
        key.display()
    ));
    // Pinned, so the CLI's relay attempt finds the MX the server bound.
    s.pin_ports();
    let dkim = s.dkim_keygen("example.test");
    let good = format!(
        "example.test MX 10 mx.example.test\n\
         mx.example.test A 192.0.2.10\n\
         10.2.0.192.in-addr.arpa PTR mx.example.test\n\
         example.test TXT \"v=spf1 ip4:192.0.2.10 -all\"\n\
         _dmarc.example.test TXT \"v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.test\"\n\
         _smtp._tls.example.test TXT \"v=TLSRPTv1; rua=mailto:dmarc-reports@example.test\"\n\
         {dkim}\n"
    );
    let set = |text: &str| {
        s.dns.update(|z| {
            *z = mailwarden_testdns::Zones::parse(&format!(". SIGNED\n{text}")).unwrap();
        })
    };
    set(&good);
    let (found, text) = audit(&s);
    let checks: Vec<&str> = found.iter().map(|(c, _)| c.as_str()).collect();
    for c in [
        "mx",
        "spf",
        "dkim",
        "dmarc",
        "tls_rpt",
        "ptr",
        "dnsbl",
        "certificate",
        "relay",
    ] {
        assert!(checks.contains(&c), "{c} not checked: {text}");
    }
    assert!(
        found.iter().all(|(_, st)| st == "pass"),
        "a correct setup: {text}"
    );

    // Each break, and the finding it must give.
    let dkim_other = dkim.replace("p=", "p=AAAA");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("MX elsewhere", good.replace("example.test MX 10 mx.example.test", "example.test MX 10 mx.other.test"), "mx", "fail"),
        ("no MX", good.replace("example.test MX 10 mx.example.test\n", ""), "mx", "fail"),
        ("PTR to another name", good.replace("PTR mx.example.test", "PTR host.isp.test"), "ptr", "warn"),
        ("no PTR", good.replace("10.2.0.192.in-addr.arpa PTR mx.example.test\n", ""), "ptr", "fail"),
        ("SPF without us", good.replace("ip4:192.0.2.10 -all", "ip4:192.0.2.99 -all"), "spf", "fail"),
        ("SPF ?all", good.replace("ip4:192.0.2.10 -all", "ip4:192.0.2.10 ?all"), "spf", "warn"),
        ("no SPF", good.replace("example.test TXT \"v=spf1 ip4:192.0.2.10 -all\"\n", ""), "spf", "fail"),
        ("another DKIM key", good.replace(&dkim, &dkim_other), "dkim", "fail"),
        ("DMARC p=none", good.replace("p=reject", "p=none"), "dmarc", "warn"),
        ("no DMARC", good.replace("_dmarc.example.test TXT \"v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.test\"\n", ""), "dmarc", "fail"),
        ("no TLS-RPT", good.replace("_smtp._tls.example.test TXT \"v=TLSRPTv1; rua=mailto:dmarc-reports@example.test\"\n", ""), "tls_rpt", "warn"),
        ("listed", format!("{good}10.2.0.192.bl.test A 127.0.0.2\n"), "dnsbl", "fail"),
    ];
    for (what, zone, check, status) in cases {
        set(&zone);
        let (found, text) = audit(&s);
        let bad: Vec<&(String, String)> = found.iter().filter(|(_, st)| st != "pass").collect();
        assert!(
            bad.iter().any(|(c, st)| c == check && st == status),
            "{what}: wanted {check} {status}: {text}"
        );
        assert!(
            bad.iter().all(|(c, _)| c == check),
            "{what}: only {check} may be off: {text}"
        );
    }
    // The certificate: the generated self-signed one is a warning.
    set(&good);
    s.stop();
    s.edit_config(|c| {
        c.remove("tls");
    });
    s.start_again();
    let (found, text) = audit(&s);
    assert!(
        found.contains(&("certificate".into(), "warn".into())),
        "{text}"
    );
}

#[test]
fn metrics_an_operator_alerts_on() {
    let s = Server::start("");
    s.add_user("alice@example.test", "pw");
    let r = submit(&s, "alice@example.test", "pw", "alice@example.test", &[]);
    assert_eq!(r["ok"], true, "{r}");
    // From outside: SPF asks for sender.test's TXT, which the test DNS does not know.
    let r = smtplib(
        s.mx(),
        "plain",
        &["--from", "x@sender.test", "--to", "alice@example.test"],
    );
    assert!(r["ok"].is_boolean(), "{r}");
    s.wait_messages("alice@example.test", 1);
    let m = wait_for(Duration::from_secs(30), || {
        let m = s.metrics();
        (m.contains("mailwarden_queue_recipients{state=\"queued\"}")
            && m.contains("mailwarden_verdicts_total{action=\"accept\"}"))
        .then_some(m)
    })
    .unwrap_or_else(|| panic!("metrics: {}", s.metrics()));
    for want in [
        "mailwarden_verdicts_total{action=\"accept\"} ",
        "mailwarden_queue_recipients{state=\"deferred\"} 0",
        "mailwarden_queue_oldest_age_seconds{state=\"queued\"}",
        "mailwarden_smtp_transaction_seconds_bucket{listener=\"submission",
        "mailwarden_smtp_end_of_data_seconds_count{listener=\"submission",
        "mailwarden_tls_handshakes_total{side=\"inbound\",result=\"ok\"}",
        "mailwarden_audit_findings{check=\"certificate\",status=\"warn\"} 1",
        "mailwarden_tls_certificate_expiry_timestamp_seconds",
        "mailwarden_dns_lookups_total{type=\"TXT\",result=\"nxdomain\"}",
        "mailwarden_dns_lookup_seconds_bucket{type=\"TXT\"",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
}

#[test]
fn the_server_tells_the_postmaster_once_when_an_address_of_ours_gets_listed() {
    // Listed from the start: the resolver keeps a "not listed" answer for its negative TTL,
    // as it must, so a listing appearing later would only be seen after it.
    let s = Server::start_with_zones(
        "[audit]\naddresses = [\"192.0.2.10\"]\ninterval = \"1s\"\n\
         [[screening.dnsbl.zones]]\nzone = \"bl.test\"\n",
        "10.2.0.192.bl.test A 127.0.0.2\n",
    );
    s.add_user("postmaster@example.test", "pm-pw");
    let gauge = |v: u8| {
        let want = format!("mailwarden_address_listed{{address=\"192.0.2.10\"}} {v}");
        wait_for(Duration::from_secs(20), || {
            s.metrics().contains(&want).then_some(())
        })
        .unwrap_or_else(|| panic!("{want} missing:\n{}", s.metrics()));
    };
    let notes = s.wait_messages("postmaster@example.test", 1);
    assert!(
        notes[0].contains("Subject: An address of ours is listed"),
        "{}",
        notes[0]
    );
    assert!(
        notes[0].contains("192.0.2.10 (listed on bl.test)"),
        "{}",
        notes[0]
    );
    gauge(1);
    s.wait_log(&["event=\"address_listed\"", "192.0.2.10"]);
    // Rechecked every second since: still listed, still one notice.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.messages("postmaster@example.test").len(), 1);
}
