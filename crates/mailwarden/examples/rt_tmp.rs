fn main() {
    for d in ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"] {
        for e in std::fs::read_dir(format!(
            "/work/shared/testdata/spam-corpus-spamassassin-public/{d}"
        ))
        .unwrap()
        {
            let p = e.unwrap().path();
            let raw = std::fs::read(&p).unwrap();
            let raw = mailwarden::classifier::strip_mbox(&raw);
            let now = mailwarden::checks::headers::received_time(raw);
            let parsed = mailwarden::checks::headers::Parsed::with_defaults(raw);
            let (f, _) =
                mailwarden::checks::scoring::heuristics(&parsed, now.unwrap_or(0), "x", false);
            for f in f.iter().filter(|f| {
                matches!(
                    f.kind,
                    mailwarden::decision::Kind::MessageIdNotFqdn
                        | mailwarden::decision::Kind::LinkMismatch
                )
            }) {
                println!("{d} {} {}", f.kind.code(), f.detail);
            }
        }
    }
}
