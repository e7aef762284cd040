//! Japanese mail, the seeds' own language: lures ("【緊急】未払い", "当選") against ordinary
//! business mail, written here in ISO-2022-JP, Shift_JIS and EUC-JP. A model trained with
//! `mailwarden learn` on some of them classifies held-out variants it never saw (runs of
//! kanji and kana are tokenised as character pairs), and what an administrator reads shows
//! the decoded subject: the decision record, `log search` and `explain`.

use crate::support::*;
use base64::Engine;

const CHARSETS: [&str; 3] = ["ISO-2022-JP", "Shift_JIS", "EUC-JP"];

const LURE_SUBJECTS: [&str; 5] = [
    "【緊急】未払い料金のお知らせ",
    "【重要】アカウント停止のお知らせ",
    "当選おめでとうございます",
    "【最終通告】お支払いの確認",
    "賞金受け取りのご案内",
];
const LURE_LINES: [&str; 6] = [
    "お客様のアカウントで未払い料金が発生しています。",
    "本日中にお支払いがない場合、アカウントは停止されます。",
    "こちらのリンクから至急お手続きください。",
    "抽選の結果、あなたが一等に当選しました。",
    "賞金を受け取るにはカード情報を入力してください。",
    "このメールは自動送信されています。至急ご確認ください。",
];
const WORK_SUBJECTS: [&str; 5] = [
    "来週の打ち合わせについて",
    "会議の議事録を送ります",
    "見積書の送付について",
    "出張報告書の提出",
    "新製品の企画会議の日程",
];
const WORK_LINES: [&str; 6] = [
    "お疲れ様です。来週の打ち合わせの資料を添付します。",
    "先日の会議の議事録をまとめましたので共有いたします。",
    "ご確認のうえ、修正点があればお知らせください。",
    "見積書を作成しましたので、ご査収ください。",
    "出張の報告書は金曜日までに提出をお願いします。",
    "企画会議は第二会議室で午後二時から行います。",
];

/// A message in `charset`: the Subject as an RFC 2047 word, the body in the charset itself.
fn message(charset: &str, i: usize, subject: &str, lines: &[&str]) -> Vec<u8> {
    let enc = encoding_rs::Encoding::for_label(charset.as_bytes()).unwrap();
    let (subject_bytes, _, bad) = enc.encode(subject);
    assert!(!bad, "{subject} in {charset}");
    let word = base64::engine::general_purpose::STANDARD.encode(&subject_bytes);
    let body: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    let (body_bytes, _, bad) = enc.encode(&body);
    assert!(!bad, "{body} in {charset}");
    let cte = if charset == "ISO-2022-JP" {
        "7bit"
    } else {
        "8bit"
    };
    let mut out = format!(
        "From: sender{i}@corpus.test\r\nTo: someone@example.test\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{i}.{charset}@corpus.test>\r\n\
         Subject: =?{charset}?B?{word}?=\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(&body_bytes);
    out
}

/// The `n`-th variant of a kind: a subject, and three of its lines in a rotating order.
fn variant<'a>(subjects: &[&'a str], lines: &[&'a str], n: usize) -> (&'a str, Vec<&'a str>) {
    let s = subjects[n % subjects.len()];
    let l = (0..3)
        .map(|k| lines[(n + k * (1 + n / 6)) % lines.len()])
        .collect();
    (s, l)
}

#[test]
fn japanese_lures_are_learned_classified_and_shown_decoded() {
    let s = Server::start("");
    s.add_user("alice@example.test", "pw");
    let corpus = s.dir.path().join("corpus");
    for (kind, subjects, lines) in [
        ("spam", &LURE_SUBJECTS, &LURE_LINES),
        ("ham", &WORK_SUBJECTS, &WORK_LINES),
    ] {
        let dir = corpus.join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        // 60 of each, 20 in each charset; variants 60.. are kept back.
        for n in 0..60 {
            let (subject, l) = variant(subjects, lines, n);
            let raw = message(CHARSETS[n % 3], n, subject, &l);
            std::fs::write(dir.join(format!("{n}.eml")), raw).unwrap();
        }
    }
    let out = s.cli_ok(
        &[
            "learn",
            "--spam",
            corpus.join("spam").to_str().unwrap(),
            "--ham",
            corpus.join("ham").to_str().unwrap(),
        ],
        None,
    );
    assert!(out.contains("the model now knows 60 spam, 60 ham"), "{out}");
    s.wait_log(&["event=\"classifier_loaded\"", "spam=60"]);

    // Held-out variants: sentences never seen, written with the same vocabulary, in each
    // charset. Nothing whole is shared with what was learnt, only words: without character
    // pairs, each sentence is one unseen "word" and the classifier has no opinion.
    let send = |raw: &[u8]| {
        let r = smtplib_stdin(
            s.mx(),
            "plain",
            &[
                "--from",
                "x@corpus.test",
                "--to",
                "alice@example.test",
                "--raw",
            ],
            Some(raw),
        );
        assert_eq!(r["ok"], true, "{r}");
    };
    let lure = "【緊急】お支払いの確認と当選のお知らせ";
    let lure_lines = [
        "未払い料金の確認のため、至急リンクからカード情報を入力してください。",
        "当選した賞金の受け取り手続きは本日中です。",
    ];
    let work = "打ち合わせの議事録と見積書";
    let work_lines = [
        "来週の会議の資料と議事録を確認してください。",
        "見積書の修正点は金曜日までにお知らせください。",
    ];
    for (i, charset) in CHARSETS.iter().enumerate() {
        send(&message(charset, 100 + i, lure, &lure_lines));
        send(&message(charset, 200 + i, work, &work_lines));
    }
    let spam = wait_for(std::time::Duration::from_secs(20), || {
        let f = s.search_records(&["--reason", "content.classifier_spam"]);
        (f.len() >= 3).then_some(f)
    })
    .unwrap_or_else(|| panic!("lures not classified; log:\n{}", s.log()));
    let ham = s.search_records(&["--reason", "content.classifier_ham"]);
    assert_eq!((spam.len(), ham.len()), (3, 3), "{spam:?}\n{ham:?}");
    for r in &spam {
        // Decoded in the record, whichever charset it came in.
        assert_eq!(r["subject"], lure, "{r}");
        assert_ne!(r["action"], "accept", "{r}");
    }
    for r in &ham {
        assert_eq!(r["subject"], work, "{r}");
        assert_eq!(r["action"], "accept", "{r}");
    }
    let id = spam[0]["id"].as_str().unwrap();
    let report = s.cli_ok(&["explain", id], None);
    assert!(report.contains(lure), "{report}");
    assert!(!report.contains("=?"), "{report}");
}
