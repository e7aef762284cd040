//! A stored message as POP3 sends it (RFC 1939 §3): every line ends in CRLF, a line that
//! starts with `.` gets one more, and `.` CRLF ends it. TOP sends the header section, the
//! blank line, and then at most N lines of the body (§7).
//!
//! Maildir files end their lines in LF (ours) or CRLF (other writers); both become CRLF, and a
//! lone CR is left as it is. The work is linear in the message and streamed: the driver
//! reads the file in chunks and writes what [`Stuffer::push`] appends, so a large message is
//! never held whole. [`SizeCounter`] gives the size LIST reports: the octets RETR sends before
//! stuffing and the terminator.

/// Streams one message into its multi-line response body.
#[derive(Debug)]
pub struct Stuffer {
    line_start: bool,
    pending_cr: bool,
    in_body: bool,
    /// TOP: body lines still to send.
    lines_left: Option<u64>,
    done: bool,
}

impl Stuffer {
    /// `top`: TOP's line count; `None` for RETR (everything).
    pub fn new(top: Option<u64>) -> Stuffer {
        Stuffer {
            line_start: true,
            pending_cr: false,
            in_body: false,
            lines_left: top,
            done: false,
        }
    }

    /// TOP has sent all it may; the rest of the file need not be read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn at_limit(&self) -> bool {
        self.in_body && self.lines_left == Some(0)
    }

    fn text(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.line_start {
            if self.at_limit() {
                self.done = true;
                return;
            }
            if bytes[0] == b'.' {
                out.push(b'.');
            }
            self.line_start = false;
        }
        out.extend_from_slice(bytes);
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.line_start && self.at_limit() {
            self.done = true;
            return;
        }
        let empty = self.line_start;
        out.extend_from_slice(b"\r\n");
        if self.in_body {
            if let Some(n) = self.lines_left.as_mut() {
                *n -= 1;
            }
        } else if empty {
            self.in_body = true;
        }
        self.line_start = true;
    }

    /// Append the next chunk of the file, converted.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() && !self.done {
            if self.pending_cr {
                self.pending_cr = false;
                if data[0] == b'\n' {
                    self.end_line(out);
                    data = &data[1..];
                } else {
                    self.text(b"\r", out);
                }
                continue;
            }
            match memchr::memchr2(b'\r', b'\n', data) {
                None => {
                    self.text(data, out);
                    break;
                }
                Some(i) => {
                    if i > 0 {
                        self.text(&data[..i], out);
                        if self.done {
                            break;
                        }
                    }
                    if data[i] == b'\n' {
                        self.end_line(out);
                    } else {
                        self.pending_cr = true;
                    }
                    data = &data[i + 1..];
                }
            }
        }
    }

    /// The end of the file: close an unterminated last line, then the terminator.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.pending_cr && !self.done {
            self.pending_cr = false;
            self.text(b"\r", out);
        }
        if !self.line_start && !self.done {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The size of a message as RETR sends it, before stuffing: a bare LF becomes CRLF, and an
/// unterminated last line gains its CRLF.
#[derive(Debug, Default)]
pub struct SizeCounter {
    size: u64,
    last: Option<u8>,
}

impl SizeCounter {
    pub fn push(&mut self, data: &[u8]) {
        for i in memchr::memchr_iter(b'\n', data) {
            let prev = if i > 0 { Some(data[i - 1]) } else { self.last };
            if prev != Some(b'\r') {
                self.size += 1;
            }
        }
        self.size += data.len() as u64;
        if let Some(&b) = data.last() {
            self.last = Some(b);
        }
    }

    pub fn finish(self) -> u64 {
        match self.last {
            Some(b'\n') | None => self.size,
            Some(_) => self.size + 2,
        }
    }
}

/// What a client reads back from a multi-line body (without its `.` CRLF terminator): each
/// line's first `.` removed where it was doubled.
pub fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(body.len());
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            line_start = false;
            continue;
        }
        plain.push(b);
        line_start = plain.ends_with(b"\r\n");
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retr(file: &[u8], top: Option<u64>, chunk: usize) -> Vec<u8> {
        let mut s = Stuffer::new(top);
        let mut out = Vec::new();
        for c in file.chunks(chunk.max(1)) {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn lines_end_in_crlf_and_dots_are_stuffed() {
        let f = b"Subject: x\n\n.hidden\nbody\r\n..\n.";
        let want = b"Subject: x\r\n\r\n..hidden\r\nbody\r\n...\r\n..\r\n.\r\n";
        for chunk in 1..f.len() + 1 {
            assert_eq!(retr(f, None, chunk), want.to_vec(), "chunk {chunk}");
        }
    }

    #[test]
    fn top_sends_the_header_the_blank_line_and_n_lines() {
        let f = b"A: 1\nB: 2\n\nl1\nl2\nl3\n";
        for chunk in 1..f.len() + 1 {
            assert_eq!(
                retr(f, Some(0), chunk),
                b"A: 1\r\nB: 2\r\n\r\n.\r\n".to_vec()
            );
            assert_eq!(
                retr(f, Some(2), chunk),
                b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n.\r\n".to_vec()
            );
            assert_eq!(retr(f, Some(9), chunk), retr(f, None, chunk));
        }
        // No body at all: the header is all there is.
        assert_eq!(retr(b"A: 1\n", Some(3), 2), b"A: 1\r\n.\r\n".to_vec());
    }

    #[test]
    fn the_size_is_what_retr_sends_before_stuffing() {
        // A small deterministic generator over the bytes that matter.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let alphabet = b"\r\n.a";
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let f: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i * 2 % 60)) & 3) as usize])
                .collect();
            let chunk = (x % 5) as usize + 1;
            let out = retr(&f, None, chunk);
            // Unstuffed without the terminator: what the client gets.
            let plain = unstuff(&out[..out.len() - 3]);
            let mut n = SizeCounter::default();
            for c in f.chunks(chunk) {
                n.push(c);
            }
            assert_eq!(n.finish(), plain.len() as u64, "{f:?}");
        }
    }
}
