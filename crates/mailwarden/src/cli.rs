//! The `mailwarden` command line: `serve`, `user`, `config`, `dkim`, `queue`, `log`,
//! `explain`, `learn`, `quarantine`, `report`, `dns`, `audit`, `quickstart`.
//!
//! Every command takes `-c FILE` (else `$MAILWARDEN_CONFIG`, else `./mailwarden.toml`, else the
//! built-in defaults), so the CLI and the server always agree on the data directory. Account
//! commands write the same store the running server reads, so changes apply without a restart.

use crate::accounts::Accounts;
use crate::clock::Clock;
use crate::config::docs::{ShowMode, reference_markdown, show};
use crate::config::{self, Loaded};
use crate::routing::Routing;
use crate::store::{Store, StoreError};
use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mailwarden",
    version,
    about = "A mail server that never takes a sender's word for who it is"
)]
struct Cli {
    /// Config file (default: $MAILWARDEN_CONFIG, else ./mailwarden.toml, else built-in defaults).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The store: its migrations, and moving a single node's state into a cluster's.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        cmd: DkimCmd,
    },
    /// Show and control the mail queue (a running server follows at once).
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Decision records: what was decided about each SMTP transaction.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// DMARC reports: the ones we sent, and who sends as our domains by the ones we got.
    Report {
        #[command(subcommand)]
        cmd: ReportCmd,
    },
    /// Check the setup as an outside sender sees it (live DNS and the network): MX, PTR,
    /// SPF, DKIM, DMARC, MTA-STS, TLS-RPT, block lists, the certificate, relaying. Exits 1
    /// when a check fails.
    Audit {
        /// Only this domain's checks (and the host's).
        #[arg(long)]
        domain: Option<String>,
        /// One JSON finding per line.
        #[arg(long)]
        json: bool,
    },
    /// The first day in one step: a production config, the admin account, DKIM keys, the DNS
    /// records to publish and a systemd unit. Never overwrites an existing config.
    Quickstart {
        /// The admin account; its domain becomes the first local domain.
        admin: String,
        /// The server's name (default mail.DOMAIN).
        #[arg(long)]
        hostname: Option<String>,
        /// Write every file under this directory instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// What our domains need published in DNS.
    Dns {
        #[command(subcommand)]
        cmd: DnsCmd,
    },
    /// Messages kept for an administrator because their content scored as spam.
    Quarantine {
        #[command(subcommand)]
        cmd: QuarantineCmd,
    },
    /// Train the content classifier on labelled mail: every file in each directory is one
    /// message (an mbox `From ` first line is allowed). Learning adds to what it knew.
    Learn {
        #[arg(long, value_name = "DIR")]
        spam: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        ham: Vec<PathBuf>,
    },
    /// Say why a transaction got its verdict: its decision record, deciding reasons first.
    /// Given a message file instead of an id, run the inbound checks on it offline (real DNS,
    /// no delivery) and report what the server would decide.
    Explain {
        /// A record's id (the `qid` of the logs, shown by `log search`), or FILE.eml.
        id: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
        /// FILE only: the client address (default 127.0.0.1).
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// FILE only: the HELO name (default localhost).
        #[arg(long)]
        helo: Option<String>,
        /// FILE only: the envelope sender (default the From: address).
        #[arg(long)]
        mail_from: Option<String>,
        /// FILE only: the recipient (default the postmaster).
        #[arg(long)]
        rcpt: Option<String>,
        /// FILE only: decide as of this Unix time, as the server did when it received the
        /// message (a record's `time`); default now.
        #[arg(long, value_name = "UNIX_TIME")]
        time: Option<i64>,
    },
}

#[derive(Subcommand)]
enum ReportCmd {
    /// The aggregate reports we sent, and the ones we chose not to send with the reason.
    Sent {
        /// Since this long ago (`7d`, `12h`) or this Unix time (default 30 days).
        #[arg(long, default_value = "30d")]
        since: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The reports others sent us (DMARC aggregate and failure, TLS), newest first.
    Received {
        /// Since this long ago or this Unix time (default 30 days).
        #[arg(long, default_value = "30d")]
        since: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Who sends as our domains: per domain and source address, from the aggregate reports
    /// others sent us, with PTR, volume, pass rates, and a flag on likely forgeries.
    Domains {
        /// Only this domain.
        domain: Option<String>,
        /// Reports received since this long ago or this Unix time (default 30 days).
        #[arg(long, default_value = "30d")]
        since: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Do not look up PTR names and our own addresses.
        #[arg(long)]
        no_dns: bool,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Print every record DOMAIN needs: MX, SPF, DKIM, DMARC, TLS-RPT, TLSA.
    Records { domain: String },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// List the messages waiting, oldest first.
    List,
    /// Print one message as it would be delivered, with control characters escaped.
    Show {
        id: String,
        /// The bytes exactly as stored (for `> message.eml`), nothing escaped.
        #[arg(long)]
        raw: bool,
    },
    /// Deliver it to the recipients' inboxes (the running server does so within a second).
    Release {
        id: String,
        /// Also teach the classifier that it is ham.
        #[arg(long)]
        learn_ham: bool,
    },
    /// Throw it away.
    Delete { id: String },
    /// Teach the classifier that it is spam, then throw it away.
    Spam { id: String },
}

#[derive(Subcommand)]
enum LogCmd {
    /// Find decision records, newest first; every option given must match.
    Search {
        #[arg(long)]
        ip: Option<String>,
        /// The envelope sender, or @DOMAIN for any sender of a domain.
        #[arg(long)]
        sender: Option<String>,
        #[arg(long)]
        rcpt: Option<String>,
        /// Only records this recent: a duration (`2h`, `7d`) or a Unix time.
        #[arg(long)]
        since: Option<String>,
        /// accept, junk, tempfail, reject or abandoned.
        #[arg(long)]
        action: Option<String>,
        /// A reason code, e.g. dnsbl_score, dmarc.fail, rcpt.no_such_local_user.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Generate a signing key for a domain and print the DNS records to publish. Without
    /// --algorithm, two keys: Ed25519 (selector S-ed25519) and RSA-2048 (S-rsa), so mail is
    /// dual-signed (RFC 8463). With --algorithm, one key with selector S.
    Keygen {
        domain: String,
        /// Selector (default: mw and the current year and month, e.g. mw202611).
        #[arg(long)]
        selector: Option<String>,
        /// ed25519 or rsa (default: both).
        #[arg(long)]
        algorithm: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Run the configured store's migrations (`serve` runs them at start too) and say which
    /// schema version it is at.
    Migrate,
    /// Copy a single node's embedded store into another, normally a cluster's PostgreSQL:
    /// every table, queue bodies spooled to files, DKIM key files and the learning key. Stop
    /// the node first. Rows the destination has already are kept, so a copy can be run again.
    Copy {
        /// `sqlite:PATH`: the node's `mailwarden.db`, or its data directory.
        #[arg(long)]
        from: String,
        /// `postgres://user:password@host:port/db` (or `sqlite:PATH`).
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queued messages with each recipient's state.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope, recipients, attempts and last replies.
    Show { id: String },
    /// Make deferred recipients due now (all messages, or one).
    Retry { id: Option<String> },
    /// Hold a message: its waiting recipients are not delivered until released.
    Hold { id: String },
    /// Release a held message for delivery now.
    Release { id: String },
    /// Delete a message without delivering or bouncing it.
    Delete { id: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account; asks for the password unless --password-stdin or --generate. Weak
    /// passwords are refused (auth.min_password_length, auth.min_password_strength).
    Add {
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "generate")]
        password_stdin: bool,
        /// Make a strong random password and print it, once.
        #[arg(long)]
        generate: bool,
        /// May log in to the web console.
        #[arg(long)]
        admin: bool,
    },
    /// Remove an account (its mailbox stays on disk).
    Remove { address: String },
    /// List accounts.
    List,
    /// Change an account's password.
    Passwd {
        address: String,
        #[arg(long, conflicts_with = "generate")]
        password_stdin: bool,
        /// Make a strong random password and print it, once.
        #[arg(long)]
        generate: bool,
    },
    /// Show an account's containment state (active, throttled, suspended) and its evidence.
    Status { address: String },
    /// Suspend an account: no AUTH, no sending; its mail waiting for delivery is held.
    Suspend {
        address: String,
        /// Why, for `user status` and the logs.
        #[arg(long, default_value = "suspended by an administrator")]
        reason: String,
    },
    /// Make a suspended account active again, releasing (--release) or deleting (--delete) the
    /// mail held meanwhile.
    Resume {
        address: String,
        #[arg(long, conflicts_with = "delete")]
        release: bool,
        #[arg(long)]
        delete: bool,
    },
    /// Addresses an account may send as, besides its own.
    Alias {
        #[command(subcommand)]
        cmd: AliasCmd,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Let ACCOUNT send as ADDRESS (a mailbox), or as any address of a domain (@DOMAIN).
    Add { account: String, address: String },
    /// Take that right back.
    Remove { account: String, address: String },
    /// List an account's aliases.
    List { account: String },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the configuration as TOML.
    Show {
        /// Print the built-in defaults instead.
        #[arg(long, conflicts_with = "changed")]
        defaults: bool,
        /// Print only the keys that differ from the defaults.
        #[arg(long)]
        changed: bool,
    },
    /// Print the configuration reference (docs/reference/config.md).
    Reference,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailwarden: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The reference describes the schema, not a file: it needs no config. Quickstart writes
    // the config.
    let cmd = match cli.cmd {
        Cmd::Quickstart {
            admin,
            hostname,
            root,
        } => {
            print!(
                "{}",
                crate::quickstart::run(&admin, hostname.as_deref(), &root)?
            );
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Config {
            cmd: ConfigCmd::Reference,
        } => {
            print!("{}", reference_markdown());
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let loaded = config::load(cli.config.as_deref())?;
    match cmd {
        Cmd::Serve => {
            // Ports bound and root given up before the runtime starts a thread.
            let switched = crate::server::privileges::drop_root(&loaded.config)?;
            crate::logging::init(&loaded.config.log);
            match switched {
                Some(user) => tracing::info!(event = "privileges_dropped", user = %user),
                None if rustix::process::geteuid().is_root() => tracing::warn!(
                    event = "running_as_root",
                    "started as root without run_as_user: the server keeps root"
                ),
                None => {}
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("mailwarden")
                .build()?;
            rt.block_on(crate::server::serve(loaded))?;
        }
        Cmd::User { cmd } => return user(&loaded, cmd),
        Cmd::Dkim { cmd } => dkim(&loaded, cmd)?,
        Cmd::Store { cmd } => store_cmd(&loaded, cmd)?,
        Cmd::Queue { cmd } => return queue(&loaded, cmd),
        Cmd::Log {
            cmd:
                LogCmd::Search {
                    ip,
                    sender,
                    rcpt,
                    since,
                    action,
                    reason,
                    limit,
                    json,
                },
        } => {
            let since = since.map(|s| parse_since(&s)).transpose()?;
            let f = crate::records::Filter {
                ip,
                sender,
                rcpt,
                since,
                action,
                reason,
                limit,
            };
            let store = Store::for_config(&loaded.config)?;
            for r in crate::records::search(&store, &f)? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let line = crate::records::report::line(&r);
                    println!("{}", crate::util::terminal_safe(&line));
                }
            }
        }
        Cmd::Quarantine { cmd } => return quarantine(&loaded, cmd),
        Cmd::Audit { domain, json } => return audit(&loaded, domain, json),
        Cmd::Quickstart { .. } => unreachable!("handled before the config is loaded"),
        Cmd::Report { cmd } => report(&loaded, cmd)?,
        Cmd::Dns {
            cmd: DnsCmd::Records { domain },
        } => {
            let cfg = &loaded.config;
            let keyring = crate::dkim::keys::Keyring::new(&cfg.data_dir);
            let keyring = if crate::store::is_postgres_url(&cfg.store.url) {
                keyring.with_store(&Store::for_config(cfg)?)
            } else {
                keyring
            };
            print!(
                "{}",
                crate::util::terminal_safe(&crate::dns_records::records(cfg, &keyring, &domain))
            );
        }
        Cmd::Learn { spam, ham } => {
            use crate::classifier::fit::Example;
            anyhow::ensure!(
                !spam.is_empty() || !ham.is_empty(),
                "give --spam DIR and/or --ham DIR"
            );
            let cfg = &loaded.config;
            let store = Store::for_config(cfg)?;
            // This run's counts, added to the stored ones at the end (a server's learning from
            // users meanwhile is kept).
            let mut model = crate::classifier::Model::default();
            let now = crate::clock::Clock::now_secs(&crate::clock::SystemClock);
            let mut examples = Vec::new();
            for (dirs, is_spam) in [(&spam, true), (&ham, false)] {
                for dir in dirs {
                    for e in std::fs::read_dir(dir)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
                    {
                        let p = e?.path();
                        if p.is_file() {
                            let raw = std::fs::read(&p)?;
                            let ex = Example::read(&raw, is_spam, now, &cfg.hostname);
                            model.learn_tokens(&ex.tokens, is_spam);
                            examples.push(ex);
                        }
                    }
                }
            }
            match crate::classifier::fit::fit(&examples, &cfg.scoring) {
                Ok((weights, report)) => {
                    println!(
                        "weights fitted on this mail ({}-fold cross-validation): at scoring.junk \
                         = {}, {:.2}% of the legitimate mail and {:.2}% of the spam go to Junk",
                        crate::classifier::fit::FOLDS,
                        cfg.scoring.junk,
                        100.0 * report.cv_ham_in_junk,
                        100.0 * report.cv_spam_recall
                    );
                    for (code, w) in &weights {
                        println!("  {code} = {w:+.2}");
                    }
                    model.weights = weights;
                }
                Err(why) => println!("weights not fitted: {why}"),
            }
            model.add_to_store(&store)?;
            let all = crate::classifier::Model::load(&store)?;
            println!(
                "learned {} spam and {} ham; the model now knows {} spam, {} ham, {} tokens",
                model.spam_messages,
                model.ham_messages,
                all.spam_messages,
                all.ham_messages,
                all.tokens_known()
            );
        }
        Cmd::Explain {
            id,
            json,
            ip,
            helo,
            mail_from,
            rcpt,
            time,
        } => {
            let store = Store::for_config(&loaded.config)?;
            let file = std::path::Path::new(&id);
            let record = if file.is_file() {
                let raw = std::fs::read(file)?;
                let cfg = &loaded.config;
                let client = crate::explain::client(cfg, &raw, ip, helo, mail_from, rcpt);
                let model = crate::classifier::Model::load(&store)?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let routing = Routing::new(cfg, Accounts::new(store.clone()));
                let now = time.unwrap_or_else(|| crate::clock::SystemClock.now_secs());
                rt.block_on(crate::explain::run(
                    cfg, &model, &store, &routing, &raw, &client, now,
                ))?
            } else {
                let Some(r) = crate::records::get(&store, &id)? else {
                    eprintln!("mailwarden: no decision record {id}, and no such file");
                    return Ok(ExitCode::from(2));
                };
                r
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                let text = crate::records::report::text(&record);
                print!("{}", crate::util::terminal_safe(&text));
            }
        }
        Cmd::Config {
            cmd: ConfigCmd::Show { defaults, changed },
        } => {
            let mode = if defaults {
                ShowMode::Defaults
            } else if changed {
                ShowMode::Changed
            } else {
                ShowMode::Effective
            };
            print!("{}", show(&loaded.config, mode));
        }
        Cmd::Config {
            cmd: ConfigCmd::Reference,
        } => print!("{}", reference_markdown()),
    }
    Ok(ExitCode::SUCCESS)
}

fn quarantine(loaded: &Loaded, cmd: QuarantineCmd) -> anyhow::Result<ExitCode> {
    use crate::quarantine as q;
    let store = Store::for_config(&loaded.config)?;
    let missing = |id: &str| {
        eprintln!("mailwarden: nothing in quarantine as {id}");
        Ok(ExitCode::from(2))
    };
    match cmd {
        QuarantineCmd::List => {
            for e in q::list(&store)? {
                let to: Vec<&str> = e.rcpts.iter().map(|(a, _)| a.as_str()).collect();
                let subject = crate::header::decoded(&e.content, "Subject").unwrap_or_default();
                let line = format!(
                    "{}  {}  score {:<5} <{}> -> {}  {}  subject: {subject}",
                    e.id,
                    crate::util::rfc5322_date(e.time),
                    e.score,
                    e.sender,
                    to.join(","),
                    e.reasons
                );
                println!("{}", crate::util::terminal_safe(&line));
            }
        }
        QuarantineCmd::Show { id, raw } => {
            let Some(e) = q::get(&store, &id)? else {
                return missing(&id);
            };
            if raw {
                std::io::stdout().write_all(&e.content)?;
            } else {
                // Decoded for people (RFC 2047 words, the body's charset); every control
                // but the line ends is escaped. `--raw` gives the bytes.
                let text = crate::quarantine::render(&e.content);
                print!("{}", crate::util::terminal_safe(&text));
            }
        }
        QuarantineCmd::Release { id, learn_ham } => {
            if !q::release_learning(&store, &id, learn_ham)? {
                return missing(&id);
            }
            println!(
                "released {id}{}; the running server delivers it",
                if learn_ham {
                    " and learnt it as ham"
                } else {
                    ""
                }
            );
        }
        QuarantineCmd::Spam { id } => {
            if !q::learn_spam(&store, &id)? {
                return missing(&id);
            }
            println!("learnt {id} as spam and deleted it");
        }
        QuarantineCmd::Delete { id } => {
            if !q::delete(&store, &id)? {
                return missing(&id);
            }
            println!("deleted {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration back from now (`90m`, `2h`, `7d`) or a Unix time.
fn report(loaded: &Loaded, cmd: ReportCmd) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    let store = Store::for_config(cfg)?;
    match cmd {
        ReportCmd::Sent { since, json } => {
            for s in crate::reports::outbound::sent(&store, parse_since(&since)?)? {
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    let line = format!(
                        "{} {} {} -> {} {} {} bytes {}",
                        crate::util::rfc5322_date(s.at),
                        s.kind,
                        s.domain,
                        s.destination,
                        s.status,
                        s.bytes,
                        s.reason
                    );
                    println!("{}", crate::util::terminal_safe(line.trim_end()));
                }
            }
        }
        ReportCmd::Received { since, json } => {
            for r in crate::reports::inbound::received(&store, parse_since(&since)?)? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let line = format!(
                        "{} {} {} from {:?}: {} rows {}",
                        crate::util::rfc5322_date(r.received),
                        r.kind,
                        r.domain,
                        r.org,
                        r.rows,
                        if r.detail.is_null() {
                            String::new()
                        } else {
                            r.detail.to_string()
                        }
                    );
                    println!("{}", crate::util::terminal_safe(line.trim_end()));
                }
            }
        }
        ReportCmd::Domains {
            domain,
            since,
            json,
            no_dns,
        } => {
            let since = parse_since(&since)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let dns = (!no_dns)
                .then(|| crate::dns::Dns::new(&cfg.dns))
                .transpose()?;
            let rows = rt.block_on(crate::reports::domains::sources(
                &store,
                cfg,
                dns.as_ref(),
                since,
                domain.as_deref(),
            ))?;
            let pct = |x: f64| format!("{:.0}%", x * 100.0);
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                    continue;
                }
                let line = format!(
                    "{} {} ({}, {}) {} messages, SPF {} DKIM {} DMARC {}{}",
                    r.domain,
                    r.source_ip,
                    r.network,
                    r.ptr.as_deref().unwrap_or("no PTR"),
                    r.messages,
                    pct(r.spf_pass),
                    pct(r.dkim_pass),
                    pct(r.dmarc_pass),
                    if r.likely_forgery {
                        "  LIKELY FORGERY (not ours, failing)"
                    } else if r.known {
                        "  ours"
                    } else {
                        ""
                    }
                );
                println!("{}", crate::util::terminal_safe(&line));
            }
        }
    }
    Ok(())
}

fn audit(loaded: &Loaded, domain: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = &loaded.config;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dns = crate::dns::Dns::new(&cfg.dns)?;
    let keyring = crate::dkim::keys::Keyring::new(&cfg.data_dir);
    let keyring = if crate::store::is_postgres_url(&cfg.store.url) {
        keyring.with_store(&Store::for_config(cfg)?)
    } else {
        keyring
    };
    // The relay attempt needs the MX's port; port 0 means only a running server knows it.
    let mx = cfg
        .listen
        .mx
        .parse::<std::net::SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0);
    let cx = crate::audit::Ctx {
        cfg,
        dns: &dns,
        keyring: &keyring,
        mx,
        now: crate::clock::from_env().now_secs(),
    };
    let found = rt.block_on(crate::audit::run(&cx, domain.as_deref()));
    for f in &found {
        if json {
            println!("{}", serde_json::to_string(f)?);
        } else {
            let mut line = format!(
                "{:<4} {:<11} {}: {}",
                f.status.as_str().to_uppercase(),
                f.check,
                f.subject,
                f.detail
            );
            if !f.fix.is_empty() {
                line.push_str(&format!("\n            fix: {}", f.fix));
            }
            println!("{}", crate::util::terminal_safe(&line));
        }
    }
    let failed = found.iter().any(|f| f.status == crate::audit::Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn parse_since(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    let d = config::units::parse_duration(s).map_err(|e| anyhow::anyhow!("--since {s:?}: {e}"))?;
    Ok(crate::clock::SystemClock.now_secs() - d.get().as_secs() as i64)
}

fn user(loaded: &Loaded, cmd: UserCmd) -> anyhow::Result<ExitCode> {
    let store = Store::for_config(&loaded.config)?;
    let accounts = Accounts::new(store.clone());
    let result = match cmd {
        UserCmd::Add {
            address,
            password_stdin,
            generate,
            admin,
        } => {
            let addr = crate::accounts::canonical(&address)?;
            let pw = new_password(&loaded.config.auth, &addr, password_stdin, generate)?;
            let added = accounts.add(&addr, pw.as_bytes())?;
            println!("added {added}");
            if admin {
                accounts.set_admin(&added)?;
                println!("{added} may log in to the web console");
            }
            if generate {
                println!(
                    "password: {} (shown once; it is stored only as a hash)",
                    *pw
                );
            }
            let domain = added.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            if !loaded
                .config
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            {
                println!(
                    "note: {domain} is not in `domains`; it is local now because {added} lives there"
                );
            }
            Ok(())
        }
        UserCmd::Passwd {
            address,
            password_stdin,
            generate,
        } => {
            let addr = crate::accounts::canonical(&address)?;
            let pw = new_password(&loaded.config.auth, &addr, password_stdin, generate)?;
            accounts.set_password(&addr, pw.as_bytes())?;
            println!("password changed for {addr}");
            if generate {
                println!(
                    "password: {} (shown once; it is stored only as a hash)",
                    *pw
                );
            }
            Ok(())
        }
        UserCmd::Remove { address } => {
            let removed = accounts.remove(&address)?;
            println!("removed {removed} (its mailbox stays on disk)");
            Ok(())
        }
        UserCmd::List => {
            for a in accounts.list()? {
                println!("{a}");
            }
            Ok(())
        }
        UserCmd::Status { address } => {
            let addr = crate::accounts::canonical(&address)?;
            let st =
                crate::containment::state(&store, &addr, crate::clock::SystemClock.now_secs())?;
            println!("account:  {addr}");
            println!("state:    {}", st.state.as_str());
            if st.since > 0 {
                println!("since:    {}", crate::util::rfc5322_date(st.since));
                println!("reason:   {}", st.reason);
                if !st.evidence.is_empty() {
                    println!("evidence: {}", st.evidence);
                }
            }
            let held = crate::containment::held(&store, &addr)?;
            if held > 0 {
                println!("held:     {held} recipient(s) waiting for a resume");
            }
            Ok(())
        }
        UserCmd::Suspend { address, reason } => {
            let addr = crate::accounts::canonical(&address)?;
            if !accounts.exists(&addr)? {
                Err(crate::accounts::AccountError::NotFound(addr))
            } else {
                let held = crate::containment::suspend(
                    &store,
                    &addr,
                    &reason,
                    "by hand",
                    crate::clock::SystemClock.now_secs(),
                )?;
                println!("suspended {addr}; {held} waiting recipient(s) held");
                Ok(())
            }
        }
        UserCmd::Resume {
            address,
            release,
            delete,
        } => {
            let addr = crate::accounts::canonical(&address)?;
            let held = crate::containment::held(&store, &addr)?;
            if held > 0 && !release && !delete {
                println!(
                    "{addr} has {held} held recipient(s): resume with --release to send them or --delete to drop them"
                );
                store.close();
                return Ok(ExitCode::from(2));
            }
            let what = if delete {
                crate::containment::HeldMail::Delete
            } else {
                crate::containment::HeldMail::Release
            };
            let n = crate::containment::resume(
                &store,
                &addr,
                what,
                crate::clock::SystemClock.now_secs(),
            )?;
            let done = if delete { "deleted" } else { "released" };
            println!("{addr} is active again; {n} held recipient(s) {done}");
            Ok(())
        }
        UserCmd::Alias { cmd } => match cmd {
            AliasCmd::Add { account, address } => {
                let alias = accounts.alias_add(&account, &address)?;
                println!("{account} may now send as {alias}");
                Ok(())
            }
            AliasCmd::Remove { account, address } => {
                let alias = accounts.alias_remove(&account, &address)?;
                println!("{account} may no longer send as {alias}");
                Ok(())
            }
            AliasCmd::List { account } => {
                for a in accounts.aliases(&account)? {
                    println!("{a}");
                }
                Ok(())
            }
        },
    };
    store.close();
    result?;
    Ok(ExitCode::SUCCESS)
}

fn store_cmd(loaded: &Loaded, cmd: StoreCmd) -> anyhow::Result<()> {
    match cmd {
        StoreCmd::Migrate => {
            let store = Store::for_config(&loaded.config)?;
            let (from, to) = store.migrated();
            let what = match store.path() {
                Some(p) => format!("embedded store {}", p.display()),
                None => "shared store (store.url)".to_string(),
            };
            if from == to {
                println!("{what}: at schema version {to}, nothing to do");
            } else {
                println!("{what}: migrated from schema version {from} to {to}");
            }
            store.close();
        }
        StoreCmd::Copy { from, to } => {
            anyhow::ensure!(
                from.starts_with("sqlite:"),
                "--from must be sqlite:PATH (a node's mailwarden.db or its data directory)"
            );
            let source = crate::store::copy::sqlite_path(&from);
            let dest = if crate::store::is_postgres_url(&to) {
                Store::open_postgres(&to)?
            } else if to.starts_with("sqlite:") {
                let path = crate::store::copy::sqlite_path(&to);
                anyhow::ensure!(path != source, "--from and --to are the same store");
                Store::open_sqlite(&path)?
            } else {
                anyhow::bail!("--to must be postgres://… or sqlite:PATH");
            };
            let report = crate::store::copy::copy(&source, &dest)?;
            dest.close();
            for c in &report {
                println!(
                    "{:<24} {:>8} added {:>8} already there",
                    c.table, c.added, c.present
                );
            }
            let added: usize = report.iter().map(|c| c.added).sum();
            println!("copied {added} rows from {}", source.display());
        }
    }
    Ok(())
}

fn dkim(loaded: &Loaded, cmd: DkimCmd) -> anyhow::Result<()> {
    use crate::dkim::keys::{Algorithm, generate, txt_strings};
    let DkimCmd::Keygen {
        domain,
        selector,
        algorithm,
    } = cmd;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let base = selector.unwrap_or_else(|| {
        let (year, month, _) = crate::util::civil_date(crate::clock::SystemClock.now_secs());
        format!("mw{year}{month:02}")
    });
    let wanted: Vec<(Algorithm, String)> = match algorithm.as_deref() {
        None => vec![
            (Algorithm::Ed25519, format!("{base}-ed25519")),
            (Algorithm::Rsa, format!("{base}-rsa")),
        ],
        Some(a) => {
            let alg = Algorithm::parse(a)
                .ok_or_else(|| anyhow::anyhow!("--algorithm must be ed25519 or rsa, not {a:?}"))?;
            vec![(alg, base)]
        }
    };
    let data_dir = &loaded.config.data_dir;
    crate::store::create_private_dir(data_dir)?;
    let shared = crate::store::is_postgres_url(&loaded.config.store.url)
        .then(|| Store::for_config(&loaded.config))
        .transpose()?;
    let mut made = Vec::new();
    for (alg, sel) in wanted {
        let g = generate(data_dir, shared.as_ref(), &domain, &sel, alg)?;
        println!(
            "stored {} key for {domain}, selector {}: {}",
            g.algorithm.name(),
            g.selector,
            g.path
                .as_ref()
                .map_or("in the shared store".to_string(), |p| p
                    .display()
                    .to_string())
        );
        made.push(g);
    }
    println!();
    println!("Publish in DNS:");
    for g in &made {
        println!("{} IN TXT {}", g.record_name, txt_strings(&g.record));
    }
    println!();
    println!("Suggested SPF and DMARC records (adjust SPF if other hosts send for {domain}):");
    println!("{domain}. IN TXT \"v=spf1 mx -all\"");
    println!(
        "_dmarc.{domain}. IN TXT \"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@{domain}\""
    );
    println!();
    println!(
        "Mail from {domain} that local accounts submit is signed with these keys from now on (dkim.sign)."
    );
    Ok(())
}

fn queue(loaded: &Loaded, cmd: QueueCmd) -> anyhow::Result<ExitCode> {
    use crate::queue::admin;
    let store = Store::for_config(&loaded.config)?;
    let age = |t: i64| {
        let s = (crate::clock::SystemClock.now_secs() - t).max(0);
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m", s / 60),
            3600..86400 => format!("{}h", s / 3600),
            _ => format!("{}d", s / 86400),
        }
    };
    let missing = |id: &str| {
        eprintln!("mailwarden: no queued message {id}");
        Ok(ExitCode::from(1))
    };
    // Hold or release a queued message's recipients.
    let recipients_of = |id: &str, act: fn(&Store, &str) -> Result<usize, StoreError>, done| {
        if admin::show(&store, id)?.is_none() {
            return missing(id);
        }
        let n = act(&store, id)?;
        println!("{done} {n} recipient(s) of {id}");
        Ok(ExitCode::SUCCESS)
    };
    let result = match cmd {
        QueueCmd::List { json } => {
            let all = admin::list(&store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("queue is empty");
            } else {
                println!(
                    "{:<14} {:>5} {:>8}  {:<30} recipients",
                    "ID", "AGE", "SIZE", "SENDER"
                );
                for m in &all {
                    let states: Vec<String> = m
                        .recipients
                        .iter()
                        .map(|r| format!("{} ({})", r.address, r.status))
                        .collect();
                    let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
                    println!(
                        "{:<14} {:>5} {:>8}  {:<30} {}",
                        m.id,
                        age(m.created),
                        m.size,
                        sender,
                        states.join(", ")
                    );
                }
                println!("{} message(s)", all.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Show { id } => match admin::show(&store, &id)? {
            None => missing(&id),
            Some(m) => {
                println!("id:       {}", m.id);
                println!(
                    "arrived:  {} ({} ago)",
                    crate::util::rfc5322_date(m.created),
                    age(m.created)
                );
                println!("sender:   <{}>", m.sender);
                println!("size:     {}", m.size);
                for r in &m.recipients {
                    println!("rcpt:     <{}> {} {}", r.address, r.route, r.status);
                    println!("          attempts: {}", r.attempts);
                    if r.status == "deferred" {
                        let wait = r.next_attempt - crate::clock::SystemClock.now_secs();
                        println!("          next attempt: in {}s", wait.max(0));
                    }
                    if let Some(reply) = &r.last_reply {
                        let reply = crate::util::terminal_safe(reply);
                        println!("          last reply: {reply}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        QueueCmd::Retry { id } => {
            let n = admin::retry(&store, id.as_deref())?;
            println!("{n} deferred recipient(s) due now");
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Hold { id } => recipients_of(&id, admin::hold, "held"),
        QueueCmd::Release { id } => recipients_of(&id, admin::release, "released"),
        QueueCmd::Delete { id } => {
            if admin::delete(&store, &loaded.config.data_dir, &id)? {
                println!("deleted {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                missing(&id)
            }
        }
    };
    store.close();
    result
}

/// A password for `user add|passwd`: generated, or read and refused if it is weak.
fn new_password(
    auth: &config::Auth,
    addr: &str,
    from_stdin: bool,
    generate: bool,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if generate {
        return Ok(crate::accounts::generate_password());
    }
    let pw = read_password(addr, from_stdin)?;
    if let Some(why) = crate::accounts::weak_password(auth, addr, &pw) {
        anyhow::bail!("{why} (or use --generate)");
    }
    Ok(pw)
}

fn read_password(addr: &str, from_stdin: bool) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']).to_string();
        zeroize::Zeroize::zeroize(&mut line);
        zeroize::Zeroizing::new(trimmed)
    } else {
        let first = zeroize::Zeroizing::new(
            rpassword::prompt_password(format!("Password for {addr}: ")).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read a password from the terminal ({e}); use --password-stdin"
                )
            })?,
        );
        let again = zeroize::Zeroizing::new(rpassword::prompt_password("Again: ")?);
        anyhow::ensure!(*first == *again, "the passwords differ");
        std::io::stderr().flush()?;
        first
    };
    anyhow::ensure!(!pw.is_empty(), "the password must not be empty");
    Ok(pw)
}
