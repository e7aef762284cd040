//! `mwdns ZONEFILE`: serve a zone file (the mailwarden-testdns format) on 127.0.0.1, UDP and
//! TCP, and print `listening 127.0.0.1:PORT`. For benchmarks that need records on loopback.
#![forbid(unsafe_code)]

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: mwdns ZONEFILE");
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
    let dns = mailwarden_testdns::TestDns::start(zones);
    println!("listening {}", dns.addr);
    loop {
        std::thread::park();
    }
}
