//! Local delivery over LMTP (RFC 2033), for a cluster: every node hands its local mail to one
//! mailbox server (Dovecot's `lmtp` service, say) at `delivery.lmtp`, instead of writing a
//! Maildir of its own.
//!
//! One connection per message: LHLO, MAIL, an RCPT for each local recipient, DATA. LMTP
//! answers DATA once per accepted recipient, so each recipient gets its own outcome: `2xx`
//! delivered, `5xx` failed for good, `4xx` or a broken connection tried again later.
//! Recipients bound for Junk go in a transaction of their own that carries
//! `X-Spam-Flag: YES` and `X-Mailwarden-Folder: Junk`, for the mailbox server's filter (a
//! Sieve `fileinto "Junk"`) to act on: LMTP has no way to name a folder.
//!
//! A crash between the server's `250` and the queue's commit delivers that message again at
//! recovery: unlike a Maildir, the server cannot be asked whether it has the message.
//!
//! Security: the LMTP server is configured, not found in DNS, but its replies are still read
//! with a cap on line length and count, and every step has a time limit.

use super::maildir::Prepared;
use crate::queue::Folder;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Lines of one reply, and octets of one line, read at most.
const MAX_REPLY_LINES: usize = 100;
const MAX_LINE: usize = 4096;

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum Landed {
    Delivered(String),
    /// Refused for good (`5xx`), with the reply.
    Failed(String),
    /// Not now (`4xx`, or no answer): try again later.
    Later(String),
}

/// One recipient of a message: its queue index, mailbox address and folder.
pub struct Rcpt {
    pub idx: u32,
    pub mailbox: String,
    pub folder: Folder,
}

pub struct Lmtp {
    addr: String,
    hostname: String,
    timeout: Duration,
}

struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

type Conn = BufReader<TcpStream>;

impl Lmtp {
    pub fn new(addr: &str, hostname: &str, timeout: Duration) -> Lmtp {
        Lmtp {
            addr: addr.to_string(),
            hostname: hostname.to_string(),
            timeout,
        }
    }

    /// Deliver `msg` to `rcpts`; one outcome per recipient, in their order.
    pub async fn deliver(&self, msg: &Prepared, rcpts: &[Rcpt]) -> Vec<(u32, Landed)> {
        let content = match msg.crlf_bytes() {
            Ok(c) => c,
            Err(e) => return later_all(rcpts.iter(), &format!("message unreadable: {e}")),
        };
        let mut out = Vec::new();
        for folder in [Folder::Inbox, Folder::Junk] {
            let group: Vec<&Rcpt> = rcpts.iter().filter(|r| r.folder == folder).collect();
            if group.is_empty() {
                continue;
            }
            let mut data = Vec::new();
            if folder == Folder::Junk {
                data.extend_from_slice(b"X-Spam-Flag: YES\r\nX-Mailwarden-Folder: Junk\r\n");
            }
            data.extend_from_slice(&content);
            let mut stuffed = Vec::with_capacity(data.len() + 64);
            mailwarden_proto::data::dot_stuff(&data, &mut stuffed);
            drop(data);
            let sender = msg.message().sender.clone();
            // Replies are kept as they come: recipients answered before a failure keep their
            // outcome (a delivered one is never sent again), the rest are tried later.
            let mut got = Vec::with_capacity(group.len());
            let r = tokio::time::timeout(
                self.timeout * 4,
                self.transaction(&sender, &group, &stuffed, &mut got),
            )
            .await;
            let why = match r {
                Ok(Ok(())) => "no answer from the LMTP server".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "LMTP server timed out".to_string(),
            };
            for rc in &group {
                match got.iter().find(|(i, _)| *i == rc.idx) {
                    Some(answered) => out.push(answered.clone()),
                    None => out.push((rc.idx, Landed::Later(why.clone()))),
                }
            }
        }
        out
    }

    async fn transaction(
        &self,
        sender: &str,
        rcpts: &[&Rcpt],
        stuffed: &[u8],
        out: &mut Vec<(u32, Landed)>,
    ) -> std::io::Result<()> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        let mut c = BufReader::new(stream);
        expect(&mut c, self.timeout, 220).await?;
        self.command(&mut c, &format!("LHLO {}", self.hostname), 250)
            .await?;
        self.command(&mut c, &format!("MAIL FROM:<{sender}>"), 250)
            .await?;
        let mut accepted = Vec::new();
        for r in rcpts {
            let reply = self
                .send(&mut c, &format!("RCPT TO:<{}>", r.mailbox))
                .await?;
            match reply.code {
                200..=299 => accepted.push(r.idx),
                500..=599 => out.push((r.idx, Landed::Failed(reply.line()))),
                _ => out.push((r.idx, Landed::Later(reply.line()))),
            }
        }
        if accepted.is_empty() {
            let _ = self.send(&mut c, "QUIT").await;
            return Ok(());
        }
        self.command(&mut c, "DATA", 354).await?;
        let w = c.get_mut();
        tokio::time::timeout(self.timeout * 2, w.write_all(stuffed))
            .await
            .map_err(|_| std::io::Error::other("sending the message timed out"))??;
        // RFC 2033 §4.2: one reply for each recipient RCPT accepted, in order.
        for idx in accepted {
            let reply = read_reply(&mut c, self.timeout * 2).await?;
            out.push((
                idx,
                match reply.code {
                    200..=299 => Landed::Delivered(reply.line()),
                    500..=599 => Landed::Failed(reply.line()),
                    _ => Landed::Later(reply.line()),
                },
            ));
        }
        let _ = self.send(&mut c, "QUIT").await;
        Ok(())
    }

    async fn send(&self, c: &mut Conn, line: &str) -> std::io::Result<Reply> {
        let w = c.get_mut();
        tokio::time::timeout(self.timeout, w.write_all(format!("{line}\r\n").as_bytes()))
            .await
            .map_err(|_| std::io::Error::other("write timed out"))??;
        read_reply(c, self.timeout).await
    }

    async fn command(&self, c: &mut Conn, line: &str, want: u16) -> std::io::Result<()> {
        let r = self.send(c, line).await?;
        if r.code != want {
            return Err(std::io::Error::other(format!(
                "LMTP {} answered {}",
                line.split(' ').next().unwrap_or(line),
                r.line()
            )));
        }
        Ok(())
    }
}

fn later_all<'a>(rcpts: impl Iterator<Item = &'a Rcpt>, why: &str) -> Vec<(u32, Landed)> {
    rcpts
        .map(|r| (r.idx, Landed::Later(why.to_string())))
        .collect()
}

async fn expect(c: &mut Conn, timeout: Duration, want: u16) -> std::io::Result<()> {
    let r = read_reply(c, timeout).await?;
    if r.code != want {
        return Err(std::io::Error::other(format!("LMTP greeting {}", r.line())));
    }
    Ok(())
}

/// One reply, possibly multi-line (`250-...`, then `250 ...`).
async fn read_reply(c: &mut Conn, timeout: Duration) -> std::io::Result<Reply> {
    let mut text = String::new();
    for _ in 0..MAX_REPLY_LINES {
        let mut line = Vec::new();
        let n = tokio::time::timeout(timeout, read_line(c, &mut line))
            .await
            .map_err(|_| std::io::Error::other("LMTP server did not answer in time"))??;
        if n == 0 {
            return Err(std::io::Error::other("LMTP server closed the connection"));
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| std::io::Error::other(format!("malformed LMTP reply {line:?}")))?;
        let rest = line.get(4..).unwrap_or("");
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(rest);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(Reply { code, text });
        }
    }
    Err(std::io::Error::other("LMTP reply too long"))
}

/// A line, at most `MAX_LINE` octets kept; the rest of a longer one is read and dropped.
async fn read_line(c: &mut Conn, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = c.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        c.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A scripted LMTP server: answers each line it reads with the next of `replies`.
    async fn server(replies: Vec<&'static str>) -> (String, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut c = BufReader::new(s);
            let mut seen = String::new();
            c.get_mut().write_all(b"220 lmtp ready\r\n").await.unwrap();
            let mut replies = replies.into_iter();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if c.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                seen.push_str(&line);
                if in_data && line != ".\r\n" {
                    continue;
                }
                in_data = false;
                let Some(r) = replies.next() else { break };
                if line.starts_with("DATA") {
                    in_data = true;
                }
                c.get_mut().write_all(r.as_bytes()).await.unwrap();
            }
            seen
        });
        (addr, h)
    }

    /// A message with `content`, ready for delivery.
    fn prepared(content: &[u8]) -> Prepared {
        let to = crate::queue::Recipient {
            idx: 0,
            address: "a@x.test".into(),
            route: crate::queue::Route::Remote,
        };
        let msg = crate::queue::Message::generated("mx", "mx.test", 0, to, content.to_vec());
        Prepared::new(std::sync::Arc::new(msg)).unwrap()
    }

    #[tokio::test]
    async fn each_recipient_gets_its_own_outcome() {
        let (addr, h) = server(vec![
            "250-lmtp\r\n250 PIPELINING\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "550 5.1.1 no such user\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            // After the final dot: one reply per accepted recipient.
            "250 2.0.0 saved\r\n452 4.2.2 over quota\r\n",
            "221 bye\r\n",
        ])
        .await;
        let lmtp = Lmtp::new(&addr, "mx.test", Duration::from_secs(5));
        let p = prepared(b"Subject: t\r\n\r\n.leading dot\r\n");
        let rcpt = |idx, m: &str| Rcpt {
            idx,
            mailbox: m.into(),
            folder: Folder::Inbox,
        };
        let out = lmtp
            .deliver(
                &p,
                &[
                    rcpt(0, "a@x.test"),
                    rcpt(1, "nobody@x.test"),
                    rcpt(2, "full@x.test"),
                ],
            )
            .await;
        assert_eq!(
            out,
            vec![
                (0, Landed::Delivered("250 2.0.0 saved".into())),
                (1, Landed::Failed("550 5.1.1 no such user".into())),
                (2, Landed::Later("452 4.2.2 over quota".into())),
            ]
        );
        let seen = h.await.unwrap();
        assert!(seen.contains("LHLO mx.test\r\n"), "{seen}");
        assert!(
            seen.contains("\r\n..leading dot\r\n.\r\n"),
            "dot-stuffed: {seen}"
        );
    }

    #[tokio::test]
    async fn a_server_that_is_down_means_later() {
        let lmtp = Lmtp::new("127.0.0.1:1", "mx.test", Duration::from_secs(2));
        let p = prepared(b"x\r\n");
        let out = lmtp
            .deliver(
                &p,
                &[Rcpt {
                    idx: 0,
                    mailbox: "a@x.test".into(),
                    folder: Folder::Junk,
                }],
            )
            .await;
        assert!(matches!(out[0], (0, Landed::Later(_))), "{out:?}");
    }
}
