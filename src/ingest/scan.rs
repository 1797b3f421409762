//! The ingest hot path's JSON reader: one flat feed record, the way feeds send them.
//!
//! serde_json is general — it matches every key against twenty fields through a visitor and
//! validates as it goes — and it was the largest cost of a ping once indexing got cheap. This
//! scanner reads a flat object of strings without escapes, plain numbers, `null`, `true` and
//! `false` straight into [`Raw`]. It never decides a line is bad: whatever it is not sure of (an
//! escape, a nested value, a duplicate key, a number in the wrong shape for its field, anything
//! after the object) makes it step aside, and serde_json reads the line as before — so accepted
//! lines mean the same and refused lines get the same errors. A test compares the two readers on
//! every line the parser's own tests use and on thousands of generated ones.
//!
//! Numbers are read here only with up to 15 digits and no exponent (a coordinate to the nanometre):
//! then digits / 10^k is one correctly rounded division, the very value serde_json computes.

use std::borrow::Cow;

use super::raw::{Raw, Ts};

/// Reads the record in `line` into `raw` (which must start empty); false when serde_json should
/// read it instead (`raw` is then left part-filled).
pub(super) fn raw<'a>(line: &'a [u8], raw: &mut Raw<'a>) -> bool {
    read(line, raw).is_some()
}

fn read<'a>(line: &'a [u8], raw: &mut Raw<'a>) -> Option<()> {
    // One UTF-8 check for the line (vectorised for ASCII), so strings are slices of it.
    let text = std::str::from_utf8(line).ok()?;
    let mut s = Scan { t: text, i: 0 };
    let mut seen = 0u32;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            let key = s.string()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let bit = match key {
                "kind" => s.text(&mut raw.kind, 0)?,
                "ts" => {
                    raw.ts = match s.peek()? {
                        b'"' => Some(Ts::rfc3339(s.string()?)),
                        b'n' => {
                            s.word(b"null")?;
                            None
                        }
                        _ => Some(Ts(Ok(s.number()?.int()?))),
                    };
                    1
                }
                "device" => s.text(&mut raw.device, 2)?,
                "lat" => s.float(&mut raw.lat, 3)?,
                "lng" => s.float(&mut raw.lng, 4)?,
                "crs" => s.text(&mut raw.crs, 5)?,
                "accuracy_m" => s.float(&mut raw.accuracy_m, 6)?,
                "source" => s.text(&mut raw.source, 7)?,
                "sensor" => s.text(&mut raw.sensor, 8)?,
                "in" => s.count(&mut raw.inn, 9)?,
                "out" => s.count(&mut raw.out, 10)?,
                "period_s" => s.float(&mut raw.period_s, 11)?,
                "in_total" => s.count(&mut raw.in_total, 12)?,
                "out_total" => s.count(&mut raw.out_total, 13)?,
                "occupancy" => s.count(&mut raw.occupancy, 14)?,
                "station" => s.text(&mut raw.station, 15)?,
                "gate" => s.text(&mut raw.gate, 16)?,
                "entries" => s.count(&mut raw.entries, 17)?,
                "exits" => s.count(&mut raw.exits, 18)?,
                "dir" => s.text(&mut raw.dir, 19)?,
                "entries_total" => s.count(&mut raw.entries_total, 20)?,
                "exits_total" => s.count(&mut raw.exits_total, 21)?,
                "seq" => s.count(&mut raw.seq, 22)?,
                _ => {
                    s.skip_scalar()?;
                    31
                }
            };
            // serde refuses a known field given twice; let it say so.
            if bit < 31 {
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
            }
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == s.t.len()).then_some(())
}

/// A JSON number as scanned: its digits (up to 19 kept exactly) and shape.
struct Num {
    neg: bool,
    mantissa: u64,
    digits: u32,
    frac_digits: u32,
    exp: bool,
}

impl Num {
    /// As an integer, when it is written as one with at most 18 digits (serde_json reads "-0" as
    /// the float -0.0, so that one is its call).
    fn int(&self) -> Option<i64> {
        if self.frac_digits > 0 || self.exp || self.digits > 18 || (self.neg && self.mantissa == 0) {
            return None;
        }
        let v = self.mantissa as i64;
        Some(if self.neg { -v } else { v })
    }

    /// As a float, when it has at most 15 digits and no exponent: the mantissa is then exact as an
    /// f64 and so is 10^k, and one division rounds correctly — exactly what serde_json computes.
    fn float(&self) -> Option<f64> {
        const POW10: [f64; 16] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
        ];
        if self.exp || self.digits > 15 {
            return None;
        }
        let v = self.mantissa as f64 / POW10[self.frac_digits as usize];
        Some(if self.neg { -v } else { v })
    }
}

/// Whether all eight bytes of `v` (little-endian) are ASCII digits.
#[inline]
fn eight_digits(v: u64) -> bool {
    // A digit is 0x30–0x39: high nibble 3, and adding 6 to it does not carry into the high nibble.
    ((v & 0xF0F0_F0F0_F0F0_F0F0) | (((v.wrapping_add(0x0606_0606_0606_0606)) & 0xF0F0_F0F0_F0F0_F0F0) >> 4))
        == 0x3333_3333_3333_3333
}

/// The value of eight ASCII digits (the first in the lowest byte): pairs, then fours, then all.
#[inline]
fn parse_eight(v: u64) -> u64 {
    let v = (v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
    let v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    (v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32
}

struct Scan<'a> {
    t: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.t.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.bytes().get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.bytes()[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        self.i = start + len;
        self.eat(b'"')?;
        // Both ends are ASCII quotes, so this slice is on character boundaries.
        self.t.get(start..start + len)
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        let end = self.i + w.len();
        (self.bytes().get(self.i..end)? == w).then(|| self.i = end)
    }

    /// A JSON number, checked against JSON's grammar.
    fn number(&mut self) -> Option<Num> {
        let mut n = Num {
            neg: false,
            mantissa: 0,
            digits: 0,
            frac_digits: 0,
            exp: false,
        };
        if self.peek() == Some(b'-') {
            n.neg = true;
            self.i += 1;
        }
        match self.peek()? {
            b'0' => {
                self.i += 1;
                n.digits = 1;
            }
            b'1'..=b'9' => self.digits(&mut n),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            let before = n.digits;
            self.digits(&mut n);
            n.frac_digits = n.digits - before;
            if n.frac_digits == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            n.exp = true;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let mut e = Num { digits: 0, ..n };
            self.digits(&mut e);
            if e.digits == 0 {
                return None;
            }
        }
        // A number runs into a delimiter, never straight into a letter (serde would refuse it).
        if !matches!(
            self.peek(),
            None | Some(b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
        ) {
            return None;
        }
        Some(n)
    }

    /// Digits into the mantissa (which saturates; callers refuse more than 18 digits anyway).
    fn digits(&mut self, n: &mut Num) {
        // Eight at a time while they are all digits and cannot overflow (a timestamp's 13 digits,
        // a coordinate's 9: number parsing was 9 % of a replay, issue 20); the rest one by one.
        while n.digits <= 11 {
            let Some(eight) = self.bytes().get(self.i..self.i + 8) else {
                break;
            };
            let v = u64::from_le_bytes(eight.try_into().unwrap_or([0; 8]));
            if !eight_digits(v) {
                break;
            }
            n.mantissa = n.mantissa * 100_000_000 + parse_eight(v);
            n.digits += 8;
            self.i += 8;
        }
        while let Some(c @ b'0'..=b'9') = self.peek() {
            n.mantissa = n.mantissa.saturating_mul(10).saturating_add(u64::from(c - b'0'));
            n.digits += 1;
            self.i += 1;
        }
    }

    fn text(&mut self, slot: &mut Option<Cow<'a, str>>, bit: u32) -> Option<u32> {
        *slot = match self.peek()? {
            b'"' => Some(Cow::Borrowed(self.string()?)),
            _ => {
                self.word(b"null")?;
                None
            }
        };
        Some(bit)
    }

    fn float(&mut self, slot: &mut Option<f64>, bit: u32) -> Option<u32> {
        *slot = match self.peek()? {
            b'n' => {
                self.word(b"null")?;
                None
            }
            _ => Some(self.number()?.float()?),
        };
        Some(bit)
    }

    fn count(&mut self, slot: &mut Option<u64>, bit: u32) -> Option<u32> {
        *slot = match self.peek()? {
            b'n' => {
                self.word(b"null")?;
                None
            }
            _ => Some(u64::try_from(self.number()?.int()?).ok()?),
        };
        Some(bit)
    }

    /// An unknown field's value: a string, number or literal (nested values are serde's).
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            _ => self.number().map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_eight_digits_at_a_time_are_the_digits_read_one_by_one() {
        // Every 8-byte window of digits and near-digits ('/' and ':' border '0' and '9').
        let alphabet = b"0123456789/:a .-";
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let bytes: [u8; 8] = std::array::from_fn(|_| alphabet[(rnd() % alphabet.len() as u64) as usize]);
            let v = u64::from_le_bytes(bytes);
            let all = bytes.iter().all(u8::is_ascii_digit);
            assert_eq!(eight_digits(v), all, "{:?}", std::str::from_utf8(&bytes));
            if all {
                let want = bytes.iter().fold(0u64, |m, c| m * 10 + u64::from(c - b'0'));
                assert_eq!(parse_eight(v), want);
            }
        }
        // Whole numbers of every length up to 24 digits, with and without a fraction.
        for len in 1..=24usize {
            for frac in [0usize, 1, 6, 9] {
                let int: String = (0..len)
                    .map(|i| char::from(b'1' + ((rnd() % 9) as u8) * (i > 0) as u8))
                    .collect();
                let f: String = (0..frac).map(|_| char::from(b'0' + (rnd() % 10) as u8)).collect();
                let text = if frac > 0 {
                    format!("{int}.{f},")
                } else {
                    format!("{int},")
                };
                let n = Scan { t: &text, i: 0 }.number().expect(&text);
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                let want = digits.bytes().fold(0u64, |m, c| {
                    m.saturating_mul(10).saturating_add(u64::from(c - b'0'))
                });
                assert_eq!(
                    (n.mantissa, n.digits as usize, n.frac_digits as usize),
                    (want, len + frac, frac),
                    "{text}"
                );
            }
        }
    }

    fn scan(line: &str) -> Option<Raw<'_>> {
        let mut r = Raw::default();
        raw(line.as_bytes(), &mut r).then_some(r)
    }

    /// Whenever the scanner answers, serde_json reads the same record.
    fn agrees(line: &str) -> bool {
        match scan(line) {
            None => false,
            Some(fast) => {
                let slow: Raw = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("scanner accepted what serde refuses ({e}): {line}"));
                assert_eq!(fast, slow, "{line}");
                true
            }
        }
    }

    #[test]
    fn feed_records_are_read_as_serde_reads_them() {
        for line in [
            r#"{"kind":"lbs","ts":1767196800000,"device":"9f2c","lat":31.2400,"lng":121.4900,"accuracy_m":15,"source":"carrier-a"}"#,
            r#"{ "kind" : "lbs" , "ts" : "2025-12-31T23:59:58.120+08:00", "device":"a", "lat":31.24, "lng":121.49, "crs":"gcj02" }"#,
            r#"{"kind":"counter","ts":1767196800000,"sensor":"cam-1","in":12,"out":3,"period_s":10}"#,
            r#"{"kind":"counter","ts":1767196800000,"sensor":"cam-1","in_total":1200,"out_total":300,"occupancy":null}"#,
            r#"{"kind":"gate","ts":1767196800000,"station":"east-nanjing-road","gate":"G3","entries":40,"exits":2}"#,
            r#"{"kind":"gate","ts":1767196800000,"station":"s","gate":"g","dir":"in","entries_total":5,"exits_total":6}"#,
            r#"{"kind":"lbs","ts":-5,"lat":-0.0,"lng":0.001,"extra":true,"more":false,"n":null,"x":"y","z":-1.5E+2}"#,
            "{\"kind\":\"lbs\",\"device\":\"外滩\",\"lat\":0,\"lng\":0}\r",
            "{}",
            "  {  }  ",
        ] {
            assert!(agrees(line), "the scanner should read {line}");
        }
    }

    #[test]
    fn what_the_scanner_is_unsure_of_is_left_to_serde() {
        for line in [
            r#"{"kind":"lb\u0073"}"#,           // escape
            r#"{"kind":"lbs","meta":{"a":1}}"#, // nested
            r#"{"kind":"lbs","tags":[1,2]}"#,   // array
            r#"{"lat":1,"lat":2}"#,             // duplicate field
            r#"{"in":-1}"#,                     // negative count
            r#"{"in":1.0}"#,                    // fractional count
            r#"{"in":-0}"#,                     // serde's float -0.0
            r#"{"ts":1.5}"#,                    // fractional ts
            r#"{"ts":12345678901234567890}"#,   // huge ts
            r#"{"lat":31.2345678901234567}"#,   // 18 significant digits
            r#"{"lat":01}"#,                    // leading zero
            r#"{"lat":1e-3}"#,                  // exponent
            r#"{"lat":1.}"#,                    // bare point
            r#"{"lat":.5}"#,                    // no integer part
            r#"{"lat":"31.2"}"#,                // string for a number
            r#"{"kind":1}"#,                    // number for a string
            r#"{"kind":"lbs"} x"#,              // trailing garbage
            r#"{"kind":"lbs",}"#,               // trailing comma
            r#"{"kind":"lbs""#,                 // truncated
            r#"[1]"#,                           // not an object
            r#"{"lat":1true}"#,                 // number runs into a letter
            "{\"kind\":\"a\tb\"}",              // control character in a string
        ] {
            assert!(scan(line).is_none(), "the scanner should step aside for {line}");
        }
    }

    #[test]
    fn coordinates_read_to_the_same_bits_as_serde() {
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> 11) as f64 / (1u64 << 53) as f64 * 360.0 - 180.0;
            let places = (i % 13) as usize;
            let line = format!(r#"{{"lat":{v:.places$},"lng":{}}}"#, x % 1000);
            let fast = scan(&line).unwrap_or_else(|| panic!("should read {line}"));
            let slow: Raw = serde_json::from_str(&line).unwrap();
            assert_eq!(fast.lat.map(f64::to_bits), slow.lat.map(f64::to_bits), "{line}");
            assert_eq!(fast.lng.map(f64::to_bits), slow.lng.map(f64::to_bits), "{line}");
        }
    }

    #[test]
    fn generated_lines_never_disagree_with_serde() {
        // Records assembled from random pieces — field order, spacing, values of every kind, some
        // malformed — and then cut or corrupted at random; the scanner must answer for most
        // well-formed ones and agree with serde whenever it answers.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let keys = [
            "kind",
            "ts",
            "device",
            "lat",
            "lng",
            "crs",
            "accuracy_m",
            "source",
            "sensor",
            "in",
            "out",
            "period_s",
            "in_total",
            "occupancy",
            "station",
            "gate",
            "entries",
            "dir",
            "unknown",
        ];
        let values = [
            "\"lbs\"",
            "\"\"",
            "\"2026-01-01T00:00:00Z\"",
            "\"x\\\"y\"",
            "0",
            "-0",
            "12",
            "-7",
            "31.2345",
            "1e5",
            "2.5E-3",
            "123456789012345678",
            "1234567890123456789",
            "null",
            "true",
            "false",
            "{}",
            "[]",
            "\"外\"",
            "01",
            "1.",
            "-",
            "0.1",
            "-12.34567890123",
            "123.4567890123456",
            "1E400",
        ];
        let spaces = ["", " ", "\t", "  "];
        let (mut answered, mut total) = (0, 0);
        for _ in 0..50_000 {
            let n = rnd(6);
            let mut line = String::from("{");
            for f in 0..n {
                if f > 0 {
                    line.push(',');
                }
                line.push_str(spaces[rnd(4) as usize]);
                line.push_str(&format!("\"{}\"", keys[rnd(keys.len() as u64) as usize]));
                line.push_str(spaces[rnd(4) as usize]);
                line.push(':');
                line.push_str(values[rnd(values.len() as u64) as usize]);
            }
            line.push('}');
            let line = match rnd(10) {
                0 => {
                    let cut = line.len() - 1 - rnd(line.len().min(5) as u64) as usize;
                    if !line.is_char_boundary(cut) {
                        continue;
                    }
                    line[..cut].to_owned()
                }
                1 => line.replacen(':', "", 1),
                _ => line,
            };
            total += 1;
            if agrees(&line) {
                answered += 1;
            }
        }
        assert!(answered > total / 10, "{answered} of {total}");
    }
}
