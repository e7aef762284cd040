//! Human units in the config file: durations (`"30s"`, `"5m"`, `"4h"`, `"5d"`) and sizes
//! (`"25MiB"`, `"64KiB"`, or a plain number of bytes).

use super::schema::Describe;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        for (n, u) in units {
            if ms >= n && ms.is_multiple_of(n) {
                return write!(f, "{}{u}", ms / n);
            }
        }
        write!(f, "{ms}ms")
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"30s\", \"5m\", \"4h\""))?;
    let scale: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => {
            return Err(format!(
                "invalid duration unit {u:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    let ms = n
        .checked_mul(scale)
        .ok_or_else(|| format!("duration {s:?} is too long"))?;
    Ok(Duration::millis(ms))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Duration::secs(n)),
            Raw::S(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Describe for Duration {
    fn type_name() -> String {
        "duration (\"500ms\", \"30s\", \"5m\", \"4h\", \"5d\"; a bare number is seconds)".into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }

    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (m, u) in [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{u}", n / m);
            }
        }
        write!(f, "{n}")
    }
}

pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"25MiB\" or a number of bytes"))?;
    let m: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "invalid size unit {u:?} in {s:?}: use KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ));
        }
    };
    n.checked_mul(m)
        .map(ByteSize)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Describe for ByteSize {
    fn type_name() -> String {
        "size (\"64KiB\", \"25MiB\", or a number of bytes)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::secs(300));
        assert_eq!(parse_duration("300").unwrap(), Duration::secs(300));
        assert!(
            parse_duration("99999999999999999d").is_err(),
            "overflow is an error"
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::millis(250));
        assert!(parse_duration("5 weeks").is_err());
        assert_eq!(Duration::secs(300).to_string(), "5m");
        assert_eq!(Duration::secs(90).to_string(), "90s");
        assert_eq!(Duration::millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MiB").unwrap(), ByteSize::mib(25));
        assert_eq!(parse_size("1000").unwrap(), ByteSize(1000));
        assert_eq!(parse_size("2KB").unwrap(), ByteSize(2000));
        assert_eq!(parse_size("1TiB").unwrap(), ByteSize(1 << 40));
        assert!(parse_size("1PB").is_err());
        assert_eq!(ByteSize::mib(25).to_string(), "25MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }
}
