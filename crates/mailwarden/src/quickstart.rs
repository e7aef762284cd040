//! `mailwarden quickstart ADMIN [--hostname H] [--root DIR]`: the first day in one step. It
//! writes a production config (`/etc/mailwarden/mailwarden.toml`: ports 25, 465 and 587,
//! data in `/var/lib/mailwarden`), creates the admin account with a generated password
//! (printed once), generates DKIM keys, makes the self-signed certificate the server would,
//! prints every DNS record to publish, and writes a hardened systemd unit.
//!
//! `--root` puts every file under another directory (a package build, a test); the files
//! still name the production paths. An existing config is never overwritten: quickstart
//! refuses and changes nothing.

use crate::accounts::Accounts;
use crate::config::Config;
use crate::store::Store;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "/etc/mailwarden/mailwarden.toml";
pub const DATA: &str = "/var/lib/mailwarden";
pub const UNIT: &str = "/etc/systemd/system/mailwarden.service";
pub const USER: &str = "mailwarden";

/// `/x/y` under `root`.
fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// The config file's text.
pub fn config_text(admin: &str, domain: &str, hostname: &str) -> String {
    format!(
        r#"# mailwarden: written by `mailwarden quickstart` ({admin}).
# Every key is documented in `mailwarden config reference`; `mailwarden config show` prints
# the whole effective configuration.
hostname = "{hostname}"
domains = ["{domain}"]
postmaster = "{admin}"
data_dir = "{DATA}"
# The user `serve` switches to when started as root (the systemd unit starts it as this
# user directly, with the capability to bind ports below 1024).
run_as_user = "{USER}"

[listen]
mx = "0.0.0.0:25"
submission = "0.0.0.0:587"
submissions = "0.0.0.0:465"
# Admin surfaces listen on loopback only (reach them with an SSH tunnel).
metrics = "127.0.0.1:2580"
admin = "127.0.0.1:2581"

[admin]
accounts = ["{admin}"]

# Until a certificate from a public CA is set here, a self-signed one for hostname is used
# (mail servers accept it for STARTTLS; mail clients warn).
# [tls]
# cert = "/etc/letsencrypt/live/{hostname}/fullchain.pem"
# key = "/etc/letsencrypt/live/{hostname}/privkey.pem"
"#
    )
}

/// The systemd unit's text; `exe` is the binary it starts.
pub fn unit_text(exe: &Path) -> String {
    format!(
        r#"[Unit]
Description=mailwarden mail server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={USER}
Group={USER}
ExecStart={exe} serve -c {CONFIG}
Restart=on-failure
RestartSec=5s
# Ports 25, 465 and 587 without root.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=true
ProtectSystem=strict
ReadWritePaths={DATA}
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictSUIDSGID=true
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"#,
        exe = exe.display()
    )
}

/// Do it; returns what to print.
pub fn run(admin: &str, hostname: Option<&str>, root: &Path) -> anyhow::Result<String> {
    let admin = crate::accounts::canonical(admin)?;
    let domain = admin
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .ok_or_else(|| anyhow::anyhow!("{admin} is not an address"))?;
    let hostname = hostname
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_else(|| format!("mail.{domain}"));
    let config_path = under(root, CONFIG);
    anyhow::ensure!(
        !config_path.exists(),
        "{} exists: quickstart never overwrites a config (remove it first to start over)",
        config_path.display()
    );
    let unit_path = under(root, UNIT);
    anyhow::ensure!(
        !unit_path.exists(),
        "{} exists: quickstart never overwrites it",
        unit_path.display()
    );
    let text = config_text(&admin, &domain, &hostname);
    // Checked before anything is written.
    let mut cfg: Config = crate::config::parse(&text)?;
    cfg.validate()?;
    cfg.data_dir = under(root, DATA);
    crate::store::create_private_dir(&cfg.data_dir)?;

    let store = Store::for_config(&cfg)?;
    let accounts = Accounts::new(store.clone());
    let password = crate::accounts::generate_password();
    accounts.add(&admin, password.as_bytes())?;
    accounts.set_admin(&admin)?;

    let (year, month, _) =
        crate::util::civil_date(crate::clock::Clock::now_secs(&crate::clock::SystemClock));
    let base = format!("mw{year}{month:02}");
    for (alg, sel) in [
        (
            crate::dkim::keys::Algorithm::Ed25519,
            format!("{base}-ed25519"),
        ),
        (crate::dkim::keys::Algorithm::Rsa, format!("{base}-rsa")),
    ] {
        crate::dkim::keys::generate(&cfg.data_dir, None, &domain, &sel, alg)?;
    }
    // The certificate the server would make at its first start, so its TLSA record prints.
    crate::server::tls::load(&cfg)?;
    let keyring = crate::dkim::keys::Keyring::new(&cfg.data_dir);
    let records = crate::dns_records::records(&cfg, &keyring, &domain);
    store.close();

    std::fs::create_dir_all(config_path.parent().unwrap_or(root))?;
    std::fs::write(&config_path, &text)?;
    let exe =
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/mailwarden"));
    std::fs::create_dir_all(unit_path.parent().unwrap_or(root))?;
    std::fs::write(&unit_path, unit_text(&exe))?;

    Ok(format!(
        "wrote {config}\nwrote {unit}\nstore, DKIM keys and certificate in {data}\n\n\
         admin account: {admin}\npassword: {pw} (shown once; it is stored only as a hash)\n\n\
         Publish these DNS records:\n{records}\n\
         Then, as root:\n  useradd --system --home-dir {DATA} --shell /usr/sbin/nologin {USER}\n  \
         chown -R {USER}: {DATA}\n  systemctl daemon-reload && systemctl enable --now mailwarden\n\
         and check what outsiders see:  mailwarden -c {CONFIG} audit\n\
         The console is at http://127.0.0.1:2581/ on the server (ssh -L 2581:127.0.0.1:2581).\n",
        config = config_path.display(),
        unit = unit_path.display(),
        data = cfg.data_dir.display(),
        pw = *password,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_is_valid_and_production_shaped() {
        let t = super::config_text("admin@example.org", "example.org", "mx.example.org");
        let c = crate::config::parse(&t).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.mx, "0.0.0.0:25");
        assert_eq!(c.listen.submissions, "0.0.0.0:465");
        assert_eq!(c.listen.submission, "0.0.0.0:587");
        assert_eq!(c.data_dir, std::path::PathBuf::from(super::DATA));
        assert_eq!(c.run_as_user, "mailwarden");
    }
}
