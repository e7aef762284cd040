//! The `mailwarden` command line: `serve`, `user`, `config`.
//!
//! Every command takes `-c FILE` (else `$MAILWARDEN_CONFIG`, else `./mailwarden.toml`, else the
//! built-in defaults), so the CLI and the server always agree on the data directory. Account
//! commands write the same store the running server reads, so changes apply without a restart.

use crate::accounts::Accounts;
use crate::config::docs::{ShowMode, reference_markdown, show};
use crate::config::{self, Loaded};
use crate::store::Store;
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
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account; asks for the password unless --password-stdin.
    Add {
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an account (its mailbox stays on disk).
    Remove { address: String },
    /// List accounts.
    List,
    /// Change an account's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
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
    // The reference describes the schema, not a file: it needs no config.
    let cmd = match cli.cmd {
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
            crate::logging::init(&loaded.config.log);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("mailwarden")
                .build()?;
            rt.block_on(crate::server::serve(loaded))?;
        }
        Cmd::User { cmd } => user(&loaded, cmd)?,
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

fn user(loaded: &Loaded, cmd: UserCmd) -> anyhow::Result<()> {
    let store = Store::open(&loaded.config.data_dir)?;
    let accounts = Accounts::new(store.clone());
    let result = match cmd {
        UserCmd::Add {
            address,
            password_stdin,
        } => {
            let addr = crate::accounts::canonical(&address)?;
            let pw = read_password(&addr, password_stdin)?;
            let added = accounts.add(&addr, pw.as_bytes())?;
            println!("added {added}");
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
        } => {
            let addr = crate::accounts::canonical(&address)?;
            let pw = read_password(&addr, password_stdin)?;
            accounts.set_password(&addr, pw.as_bytes())?;
            println!("password changed for {addr}");
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
    };
    store.close();
    result
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
