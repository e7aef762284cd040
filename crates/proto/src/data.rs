//! Message content readers: dot-stuffed DATA (RFC 5321 §4.1.1.4, §4.5.2) and BDAT chunks
//! (RFC 3030).
//!
//! Security: only `CRLF . CRLF` ends DATA. A bare LF or bare CR never ends a line for the
//! purpose of finding the end, so `\n.\n`, `\r.\r` and mixed forms cannot split one transaction
//! into two (SMTP smuggling, CVE-2023-51766 family). Bare line endings are flagged; the session
//! then rejects the message, or with [`BareLf::Normalize`] stores them as CRLF.

/// What to do with a bare CR or LF inside message content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLf {
    /// Reject the message at its end with `554 5.5.2`.
    Reject,
    /// Store each bare CR or LF as CRLF and accept the message.
    Normalize,
}

/// What the reader saw in a finished message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentFlags {
    /// Decoded size, counted even past the limit.
    pub size: u64,
    pub too_big: bool,
    pub bare_line_ending: bool,
    /// A line longer than the text-line limit (RFC 5321 §4.5.3.1.6).
    pub long_line: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    LineStart,
    Middle,
    Cr,
    Dot,
    DotCr,
}

/// Incremental decoder for dot-stuffed DATA.
#[derive(Debug)]
pub struct DataReader {
    st: St,
    max_size: u64,
    max_line: usize,
    line_len: usize,
    policy: BareLf,
    flags: ContentFlags,
}

impl DataReader {
    pub fn new(max_size: u64, max_line: usize, policy: BareLf) -> DataReader {
        DataReader {
            st: St::LineStart,
            max_size,
            max_line,
            line_len: 0,
            policy,
            flags: ContentFlags::default(),
        }
    }

    /// Decode from `input` into `out`. Returns `(consumed, done)`; `done` means the terminating
    /// `CRLF.CRLF` was read and `consumed` stops right after it.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.st == St::Middle {
                // Fast path: copy up to the next CR or LF.
                let rest = &input[i..];
                let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                if n > 0 {
                    self.emit(&rest[..n], out);
                    self.line_len += n;
                    i += n;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            match self.st {
                St::LineStart => match b {
                    b'.' => self.st = St::Dot,
                    _ => {
                        self.st = St::Middle;
                        self.byte_in_middle(b, out);
                    }
                },
                St::Middle => self.byte_in_middle(b, out),
                St::Cr => {
                    if b == b'\n' {
                        self.emit(b"\r\n", out);
                        self.end_line();
                        self.st = St::LineStart;
                    } else {
                        self.bare(out);
                        self.st = St::Middle;
                        self.byte_in_middle(b, out);
                    }
                }
                St::Dot => {
                    if b == b'\r' {
                        self.st = St::DotCr;
                    } else {
                        // A stuffed dot: drop it, keep the rest of the line.
                        self.line_len += 1;
                        self.st = St::Middle;
                        self.byte_in_middle(b, out);
                    }
                }
                St::DotCr => {
                    if b == b'\n' {
                        return (i, true);
                    }
                    // ".<CR>x": the dot was stuffing and the CR is bare.
                    self.line_len += 1;
                    self.bare(out);
                    self.st = St::Middle;
                    self.byte_in_middle(b, out);
                }
            }
        }
        (i, false)
    }

    fn byte_in_middle(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.st = St::Cr,
            // A bare LF ends neither the line nor the message: the next byte is not at a
            // line start, so ".\n" or ".\r\n" after it cannot terminate DATA.
            b'\n' => self.bare(out),
            _ => {
                self.emit(&[b], out);
                self.line_len += 1;
            }
        }
    }

    fn bare(&mut self, out: &mut Vec<u8>) {
        self.flags.bare_line_ending = true;
        if self.policy == BareLf::Normalize {
            self.emit(b"\r\n", out);
        }
        self.end_line();
    }

    fn end_line(&mut self) {
        if self.line_len + 2 > self.max_line {
            self.flags.long_line = true;
        }
        self.line_len = 0;
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.flags.size += bytes.len() as u64;
        if self.flags.size > self.max_size {
            self.flags.too_big = true;
        }
        let dropping =
            self.flags.too_big || (self.flags.bare_line_ending && self.policy == BareLf::Reject);
        if !dropping {
            out.extend_from_slice(bytes);
        }
    }

    pub fn flags(&self) -> ContentFlags {
        let mut f = self.flags;
        if self.line_len + 2 > self.max_line {
            f.long_line = true;
        }
        f
    }
}

/// Checks BDAT content (no stuffing) for bare line endings and size, across chunk boundaries.
#[derive(Debug)]
pub struct ChunkChecker {
    prev: u8,
    max_size: u64,
    max_line: usize,
    line_len: usize,
    policy: BareLf,
    flags: ContentFlags,
}

impl ChunkChecker {
    pub fn new(max_size: u64, max_line: usize, policy: BareLf) -> ChunkChecker {
        ChunkChecker {
            prev: b'\n',
            max_size,
            max_line,
            line_len: 0,
            policy,
            flags: ContentFlags::default(),
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        for &b in input {
            let prev = self.prev;
            self.prev = b;
            if prev == b'\r' && b != b'\n' {
                self.flags.bare_line_ending = true;
                self.push(b"\n", out);
                self.line_len = 0;
            }
            match b {
                b'\n' if prev != b'\r' => {
                    self.flags.bare_line_ending = true;
                    self.push(b"\r\n", out);
                    self.end_line();
                }
                b'\n' => {
                    self.push(b"\n", out);
                    self.end_line();
                }
                b'\r' => self.push(b"\r", out),
                _ => {
                    self.push(&[b], out);
                    self.line_len += 1;
                }
            }
        }
        if self.flags.too_big || (self.flags.bare_line_ending && self.policy == BareLf::Reject) {
            out.truncate(start);
        }
    }

    fn end_line(&mut self) {
        if self.line_len + 2 > self.max_line {
            self.flags.long_line = true;
        }
        self.line_len = 0;
    }

    /// Content bytes seen so far.
    pub fn size(&self) -> u64 {
        self.flags.size
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.flags.size += bytes.len() as u64;
        if self.flags.size > self.max_size {
            self.flags.too_big = true;
        }
        out.extend_from_slice(bytes);
    }

    /// Flags at the end of the last chunk. A trailing bare CR counts as bare.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> ContentFlags {
        if self.prev == b'\r' {
            self.flags.bare_line_ending = true;
            self.push(b"\n", out);
        }
        if self.line_len + 2 > self.max_line {
            self.flags.long_line = true;
        }
        self.flags
    }
}

/// Add dot-stuffing for sending (RFC 5321 §4.5.2) and the terminating `.CRLF`. `body` must use
/// CRLF line endings.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + 16);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], policy: BareLf) -> (Vec<u8>, Option<usize>, ContentFlags) {
        let mut r = DataReader::new(1 << 20, 1000, policy);
        let mut out = Vec::new();
        let (n, done) = r.feed(input, &mut out);
        (out, done.then_some(n), r.flags())
    }

    #[test]
    fn simple_message() {
        let (out, end, f) = read_all(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", BareLf::Reject);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(end, Some(24));
        assert!(!f.bare_line_ending);
    }

    #[test]
    fn unstuffs_dots() {
        let (out, end, _) = read_all(b"..a\r\n...\r\n.\r\n", BareLf::Reject);
        assert_eq!(out, b".a\r\n..\r\n");
        assert!(end.is_some());
    }

    #[test]
    fn empty_message() {
        let (out, end, _) = read_all(b".\r\n", BareLf::Reject);
        assert!(out.is_empty());
        assert_eq!(end, Some(3));
    }

    #[test]
    fn byte_at_a_time_matches_bulk() {
        let input = b"a\r\n..b\r\n.c\r\n\r\n.\r\n";
        let mut r = DataReader::new(1 << 20, 1000, BareLf::Reject);
        let mut out = Vec::new();
        let mut done_at = None;
        for (i, b) in input.iter().enumerate() {
            let (n, done) = r.feed(std::slice::from_ref(b), &mut out);
            assert_eq!(n, 1);
            if done {
                done_at = Some(i);
                break;
            }
        }
        assert_eq!(done_at, Some(input.len() - 1));
        assert_eq!(out, b"a\r\n.b\r\nc\r\n\r\n");
    }

    #[test]
    fn smuggling_variants_do_not_end_data() {
        for payload in [
            &b"x\n.\nMAIL FROM:<a@b.test>\r\n"[..],
            b"x\r\n.\nMAIL FROM:<a@b.test>\r\n",
            b"x\n.\r\nMAIL FROM:<a@b.test>\r\n",
            b"x\r.\r\nMAIL FROM:<a@b.test>\r\n",
            b"x\r\n.\rMAIL FROM:<a@b.test>\r\n",
            b"x\r.\rMAIL FROM:<a@b.test>\r\n",
        ] {
            for policy in [BareLf::Reject, BareLf::Normalize] {
                let (_, end, f) = read_all(payload, policy);
                assert_eq!(end, None, "{payload:?} ended DATA");
                assert!(f.bare_line_ending, "{payload:?} not flagged");
            }
        }
    }

    #[test]
    fn normalize_turns_bare_endings_into_crlf() {
        let (out, end, f) = read_all(b"a\nb\rc\r\n.\r\n", BareLf::Normalize);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
        assert!(end.is_some());
        assert!(f.bare_line_ending);
    }

    #[test]
    fn size_limit_keeps_reading_to_the_end() {
        let mut r = DataReader::new(4, 1000, BareLf::Reject);
        let mut out = Vec::new();
        let (_, done) = r.feed(b"123456789\r\n.\r\n", &mut out);
        assert!(done);
        assert!(r.flags().too_big);
        assert!(out.len() <= 4);
    }

    #[test]
    fn long_lines_are_flagged() {
        let mut input = vec![b'a'; 999];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReader::new(1 << 20, 1000, BareLf::Reject);
        let mut out = Vec::new();
        r.feed(&input, &mut out);
        assert!(r.flags().long_line);
        let mut input = vec![b'a'; 998];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReader::new(1 << 20, 1000, BareLf::Reject);
        r.feed(&input, &mut out);
        assert!(!r.flags().long_line);
    }

    #[test]
    fn chunks_detect_bare_endings_across_boundaries() {
        let mut c = ChunkChecker::new(1 << 20, 1000, BareLf::Normalize);
        let mut out = Vec::new();
        c.feed(b"a\r", &mut out);
        c.feed(b"\nb\r", &mut out);
        let f = c.finish(&mut out);
        assert!(f.bare_line_ending);
        assert_eq!(out, b"a\r\nb\r\n");
        let mut c = ChunkChecker::new(1 << 20, 1000, BareLf::Reject);
        let mut out = Vec::new();
        c.feed(b"a\r", &mut out);
        c.feed(b"\nb\r\n", &mut out);
        assert!(!c.finish(&mut out).bare_line_ending);
        assert_eq!(out, b"a\r\nb\r\n");
    }

    #[test]
    fn dot_stuffing_round_trips() {
        let body = b".a\r\n..\r\nb\r\n";
        let mut wire = Vec::new();
        dot_stuff(body, &mut wire);
        assert_eq!(wire, b"..a\r\n...\r\nb\r\n.\r\n");
        let (out, end, _) = read_all(&wire, BareLf::Reject);
        assert_eq!(out, body);
        assert_eq!(end, Some(wire.len()));
    }
}
