//! Content scoring: the header and link heuristics ([`super::headers`]), the classifier and
//! URI block lists add up to a score, each reason weighed ([`super::weights`]: configured,
//! learned or built-in); `[scoring]` thresholds map it to tag, junk or reject. The
//! `X-Spam-Score`/`X-Spam-Status` fields say what was found, in SpamAssassin's shape so mail
//! clients' filters can use them.

use super::headers::{self, Parsed};
use super::weights::Weights;
use crate::classifier::{MIN_TRAINING, Model};
use crate::config::{Mode, Scoring as Cfg};
use crate::decision::{Finding, Kind};
use crate::dns::Dns;
use crate::screening::dnsbl;
use std::sync::Arc;
use std::time::Duration;

/// Link hosts asked of URI block lists, at most.
const MAX_URI_HOSTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Clean,
    Tag,
    Junk,
    Quarantine,
    Reject,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Clean => "clean",
            Level::Tag => "tag",
            Level::Junk => "junk",
            Level::Quarantine => "quarantine",
            Level::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scored {
    pub findings: Vec<Finding>,
    pub score: f64,
    pub level: Level,
}

impl Scored {
    /// Count more findings (already weighed) in the score, and level it again.
    pub fn add(&mut self, cfg: &Cfg, more: Vec<Finding>) {
        if more.is_empty() {
            return;
        }
        self.findings.extend(more);
        self.score = total(&self.findings);
        if cfg.mode != Mode::Off {
            self.level = level(cfg, self.score);
        }
    }
}

pub fn level(cfg: &Cfg, score: f64) -> Level {
    if score >= cfg.reject {
        Level::Reject
    } else if score >= cfg.quarantine {
        Level::Quarantine
    } else if score >= cfg.junk {
        Level::Junk
    } else if score >= cfg.tag {
        Level::Tag
    } else {
        Level::Clean
    }
}

/// The classifier's opinion as a finding, once it has learnt enough of both kinds.
pub fn classify(model: &Model, w: &Weights<'_>, p: &Parsed<'_>) -> Option<Finding> {
    let prob = probability(model, p)?;
    w.classifier(prob)
}

/// The classifier's spam probability, once it has learnt enough of both kinds.
pub fn probability(model: &Model, p: &Parsed<'_>) -> Option<f64> {
    if model.spam_messages < MIN_TRAINING || model.ham_messages < MIN_TRAINING {
        return None;
    }
    Some(model.score_tokens(&crate::classifier::tokens_of(p)))
}

/// The header and link heuristics' findings, unweighed, and the message's link hosts.
pub fn heuristics(
    parsed: &Parsed<'_>,
    now: i64,
    ours: &str,
    from_has_dmarc: bool,
) -> (Vec<Finding>, Vec<String>) {
    let mut findings = headers::check(parsed, now, ours, from_has_dmarc);
    let (links, hosts) = headers::check_links(parsed);
    findings.extend(links);
    (findings, hosts)
}

/// The weights in force: the config's, then the model's learned ones, then built-in.
pub fn weights<'a>(cfg: &'a Cfg, model: &'a Model) -> Weights<'a> {
    Weights {
        config: &cfg.weights,
        learned: &model.weights,
    }
}

/// Everything content scoring finds without I/O, weighed: the heuristics and the classifier.
/// The server's scoring and `eval/classifier.sh` both use it. CPU-bound: callers hold a
/// [`crate::heavy::cpu`] slot.
pub fn content(
    cfg: &Cfg,
    model: &Model,
    parsed: &Parsed<'_>,
    now: i64,
    ours: &str,
    from_has_dmarc: bool,
) -> (Vec<Finding>, Vec<String>) {
    let w = weights(cfg, model);
    let (mut findings, hosts) = heuristics(parsed, now, ours, from_has_dmarc);
    w.apply(&mut findings);
    findings.extend(classify(model, &w, parsed));
    (findings, hosts)
}

/// The sum of findings' scores, to one decimal.
pub fn total(findings: &[Finding]) -> f64 {
    (findings.iter().map(|f| f.score).sum::<f64>() * 10.0).round() / 10.0
}

/// Score a message already parsed (its first `limits.max_scan_bytes`). `now` is Unix time,
/// `ours` our hostname. The heuristics hold a [`crate::heavy::cpu`] slot; the URI block list
/// lookups do not.
#[allow(clippy::too_many_arguments)]
pub async fn score(
    dns: &Arc<Dns>,
    cfg: &Cfg,
    model: &Model,
    parsed: &Parsed<'_>,
    now: i64,
    ours: &str,
    from_has_dmarc: bool,
    dns_timeout: Duration,
) -> Scored {
    let (mut findings, hosts) = {
        let _cpu = crate::heavy::cpu().await;
        content(cfg, model, parsed, now, ours, from_has_dmarc)
    };
    if !cfg.uribl_zones.is_empty() && !hosts.is_empty() {
        let lists = crate::config::screening::Dnsbl {
            domain_zones: cfg.uribl_zones.clone(),
            ..Default::default()
        };
        let asks: Vec<(&str, &str)> = hosts
            .iter()
            .take(MAX_URI_HOSTS)
            .map(|h| ("link to", h.as_str()))
            .collect();
        for s in dnsbl::domain_lists(dns.clone(), &lists, &asks, dns_timeout).await {
            findings.push(Finding::scored(Kind::UriblListed, s.detail, s.score));
        }
    }
    let score = total(&findings);
    Scored {
        level: if cfg.mode == Mode::Off {
            Level::Clean
        } else {
            level(cfg, score)
        },
        findings,
        score,
    }
}

/// `X-Spam-Score` and `X-Spam-Status` for a tagged message.
pub fn fields(cfg: &Cfg, s: &Scored) -> String {
    let tests: Vec<String> = s
        .findings
        .iter()
        .map(|f| f.kind.code().into_owned())
        .collect();
    let yes = if s.score >= cfg.junk { "Yes" } else { "No" };
    format!(
        "X-Spam-Score: {}\r\nX-Spam-Status: {yes}, score={} required={} tests={}\r\n",
        s.score,
        s.score,
        cfg.junk,
        tests.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_map_scores_to_levels() {
        let cfg = Cfg::default();
        assert_eq!(level(&cfg, 0.0), Level::Clean);
        assert_eq!(level(&cfg, cfg.tag), Level::Tag);
        assert_eq!(level(&cfg, cfg.junk), Level::Junk);
        assert_eq!(level(&cfg, cfg.quarantine), Level::Quarantine);
        assert_eq!(level(&cfg, cfg.reject + 1.0), Level::Reject);
    }

    #[test]
    fn the_classifier_speaks_only_once_trained() {
        let spam = b"Subject: cheap replica watches\r\n\r\nbuy discount pills now\r\n";
        let ham = b"Subject: meeting notes\r\n\r\nthe committee agenda for thursday\r\n";
        let mut m = Model::default();
        for _ in 0..MIN_TRAINING - 1 {
            m.learn(spam, true);
            m.learn(ham, false);
        }
        let (spam_p, ham_p) = (Parsed::with_defaults(spam), Parsed::with_defaults(ham));
        let cfg = Cfg::default();
        let untrained = Model::default();
        let w = weights(&cfg, &untrained);
        let classify = |m: &Model, p: &Parsed<'_>| classify(m, &w, p);
        assert_eq!(classify(&m, &spam_p), None, "too little training");
        m.learn(spam, true);
        m.learn(ham, false);
        assert_eq!(
            classify(&m, &spam_p).unwrap().kind.code(),
            "content.classifier_spam"
        );
        assert_eq!(
            classify(&m, &ham_p).unwrap().kind.code(),
            "content.classifier_ham"
        );
    }

    #[tokio::test]
    async fn the_seed_sample_scores_as_spam() {
        // ../shared/seeds/004: the spam the project grew from, as its header shows it.
        let raw = b"From: \"Yessenia Lakeshia\"\r\n\
            Message-ID: <201105171916.8F06B8E1441DD3CA51BF4BA1@1f41un723>\r\nTo:\r\n\
            MIME-Version: 1.0\r\nDate: Tue, 17 May 2011 14:17:47 -0500\r\n\
            Subject: Exquisite Replica Bags - Satisfaction Guaranteed or your money back\r\n\
            Content-Transfer-Encoding: 7bit\r\n\r\nExquisite Replica Bags\r\n\r\n\
            http://hotreplicaolympic.ru\r\n";
        // No URI lists configured: nothing is asked of this (dead) nameserver.
        let dns_cfg = crate::config::Dns {
            nameservers: vec!["127.0.0.1:9".into()],
            ..Default::default()
        };
        let dns = Arc::new(Dns::new(&dns_cfg).unwrap());
        let cfg = Cfg::default();
        let s = score(
            &dns,
            &cfg,
            &Model::default(),
            &Parsed::with_defaults(raw),
            1_795_000_000,
            "mx.example.test",
            false,
            Duration::from_millis(100),
        )
        .await;
        let codes: Vec<String> = s
            .findings
            .iter()
            .map(|f| f.kind.code().into_owned())
            .collect();
        assert!(
            codes.iter().any(|c| c == "headers.from_no_address"),
            "{codes:?}"
        );
        // Three heuristics together, at their built-in weights, none enough alone.
        assert_eq!(
            codes,
            [
                "headers.from_no_address",
                "headers.to_empty",
                "headers.date_past"
            ]
        );
        assert_eq!(s.level, Level::Junk, "{s:?}");
        assert!(
            fields(&cfg, &s).contains("X-Spam-Status: Yes, score=5"),
            "{}",
            fields(&cfg, &s)
        );
    }
}
