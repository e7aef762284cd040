//! `mwdns ZONEFILE [ADDR]`: serve a zone file (the mailwarden-testdns format) on a loopback
//! address (default 127.0.0.1 on a free port), UDP and TCP, and print `listening ADDR`.
//! For benchmarks that need records on loopback; a fixed ADDR such as 127.0.2.53:53 serves
//! resolvers that cannot be given a port (OpenDKIM's `Nameservers`).
#![forbid(unsafe_code)]

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: mwdns ZONEFILE [ADDR]");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mwdns: cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let zones = match mailwarden_testdns::Zones::parse(&text) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("mwdns: {path}: {e}");
            std::process::exit(1);
        }
    };
    let at = match std::env::args().nth(2).map(|a| a.parse()) {
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            eprintln!("mwdns: ADDR must be IP:PORT");
            std::process::exit(2);
        }
    };
    let dns = match mailwarden_testdns::TestDns::start_on(zones, at) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mwdns: {e}");
            std::process::exit(1);
        }
    };
    println!("listening {}", dns.addr);
    loop {
        std::thread::park();
    }
}
