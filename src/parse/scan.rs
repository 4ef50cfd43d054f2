//! A strict JSON scanner: the fast path in front of serde for the few fields read from a chat
//! completion body, a stream chunk or a request body, and a skipper for everything else.
//!
//! It is stricter than serde, never looser: it gives up (`None`) on anything unusual (escapes
//! in a string it returns or in a key, a key read twice, a number of another form than the
//! field's, nesting deeper than [`MAX_DEPTH`]) and the caller then parses with serde, which
//! decides. So whatever it returns, serde returns too; the tests hold it to that.

/// Deepest nesting skipped (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// A position in a JSON text.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Scanner { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let bytes = self.bytes();
        // Compact JSON has no whitespace: one comparison then (whitespace is at most ` `).
        match bytes.get(self.pos) {
            Some(&byte) if byte > b' ' => return Some(byte),
            _ => {}
        }
        self.pos = after_whitespace(bytes, self.pos);
        bytes.get(self.pos).copied()
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Enters an object (`{`).
    pub(crate) fn object(&mut self) -> Option<()> {
        self.eat(b'{')
    }

    /// The next key of the object entered (its `:` consumed), `Ok(None)` at its end; `first`
    /// is true before the first key. Keys with escapes give up.
    #[inline]
    pub(crate) fn next_key(&mut self, first: &mut bool) -> Option<Option<&'a str>> {
        let byte = self.peek()?;
        if byte == b'}' {
            self.pos += 1;
            return Some(None);
        }
        if !*first {
            if byte != b',' {
                return None;
            }
            self.pos += 1;
        }
        *first = false;
        let key = self.plain_string()?;
        self.eat(b':')?;
        Some(Some(key))
    }

    /// Enters an array (`[`).
    pub(crate) fn array(&mut self) -> Option<()> {
        self.eat(b'[')
    }

    /// True when another element of the array entered follows (the scanner is at it), false at
    /// its end.
    #[inline]
    pub(crate) fn next_element(&mut self, first: &mut bool) -> Option<bool> {
        let byte = self.peek()?;
        if byte == b']' {
            self.pos += 1;
            return Some(false);
        }
        if !*first {
            if byte != b',' {
                return None;
            }
            self.pos += 1;
            // No trailing comma.
            if self.peek()? == b']' {
                return None;
            }
        }
        *first = false;
        Some(true)
    }

    /// `null`, consumed; false (nothing consumed) when the value is something else.
    #[inline]
    pub(crate) fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal(b"null").is_some()
    }

    /// `null` (`Some(None)`), or the value `read` reads; `None` when it cannot.
    pub(crate) fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// A string without escapes, borrowed.
    #[inline]
    pub(crate) fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = start + special(&self.bytes()[start..])?;
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        self.text.get(start..end)
    }

    /// A non-negative integer without fraction or exponent that fits `u64`.
    #[inline]
    pub(crate) fn unsigned(&mut self) -> Option<u64> {
        self.peek()?;
        let bytes = self.bytes();
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(&digit @ b'0'..=b'9') = bytes.get(self.pos) {
            value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.pos += 1;
        }
        let len = self.pos - start;
        // No leading zero, and a number ends here (no `.`, `e`, or anything else).
        if len == 0 || (len > 1 && bytes[start] == b'0') {
            return None;
        }
        match bytes.get(self.pos) {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']') => Some(value),
            _ => None,
        }
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => None,
        }
    }

    /// The text of a number, checked to be one (for serde to read its value exactly as it
    /// would in the whole document).
    pub(crate) fn number_text(&mut self) -> Option<&'a str> {
        let first = self.peek()?;
        if first != b'-' && !first.is_ascii_digit() {
            return None;
        }
        let start = self.pos;
        self.skip_number()?;
        self.text.get(start..self.pos)
    }

    /// Skips any one value, checking it is JSON.
    pub(crate) fn skip_value(&mut self) -> Option<()> {
        self.skip(0)
    }

    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => {
                self.pos += 1;
                let mut first = true;
                while self.next_key(&mut first)?.is_some() {
                    self.skip(depth + 1)?;
                }
                Some(())
            }
            b'[' => {
                self.pos += 1;
                let mut first = true;
                while self.next_element(&mut first)? {
                    self.skip(depth + 1)?;
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.skip_number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes()[self.pos..]
            .starts_with(word)
            .then(|| self.pos += word.len())
    }

    /// A string, escapes checked as serde_json checks those it skips.
    fn skip_string(&mut self) -> Option<()> {
        self.pos += 1;
        self.pos += string_body(&self.bytes()[self.pos..])? + 1;
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn skip_number(&mut self) -> Option<()> {
        let bytes = self.bytes();
        let digits = |pos: &mut usize| {
            let start = *pos;
            while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - start
        };
        let mut pos = self.pos;
        if bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
        let start = pos;
        let whole = digits(&mut pos);
        if whole == 0 || (whole > 1 && bytes[start] == b'0') {
            return None;
        }
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            if digits(&mut pos) == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = bytes.get(pos) {
                pos += 1;
            }
            if digits(&mut pos) == 0 {
                return None;
            }
        }
        self.pos = pos;
        Some(())
    }
}

/// The length of a string's text up to its closing `"`, for `bytes` just past the opening one;
/// escapes checked as serde_json checks those it skips. `None` for a control character, a bad
/// escape or no closing quote. UTF-8 is not checked.
pub(crate) fn string_body(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        pos += special(&bytes[pos..])?;
        match bytes[pos] {
            b'"' => return Some(pos),
            b'\\' => match *bytes.get(pos + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => pos += 2,
                b'u' => {
                    let hex = bytes.get(pos + 2..pos + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    pos += 6;
                }
                _ => return None,
            },
            // A control character.
            _ => return None,
        }
    }
}

/// Where the whitespace from `pos` ends. Providers indent their answers (OpenAI's by 2 to 16
/// spaces a line), so a run of spaces is skipped eight bytes at a time: the first byte of a
/// word that is not a space is its lowest nonzero byte once spaces are XORed away. Kept out
/// of line: inlined into every [`Scanner::peek`] it would keep the scanner's callers from being
/// inlined on compact JSON, which never comes here.
#[cold]
#[inline(never)]
fn after_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    const SPACES: u64 = u64::from_ne_bytes([b' '; 8]);
    loop {
        match bytes.get(pos) {
            Some(b' ') => {
                pos += 1;
                while let Some(chunk) = bytes.get(pos..pos + 8) {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(chunk);
                    let others = u64::from_le_bytes(word) ^ SPACES;
                    if others != 0 {
                        pos += (others.trailing_zeros() / 8) as usize;
                        break;
                    }
                    pos += 8;
                }
            }
            Some(b'\t' | b'\n' | b'\r') => pos += 1,
            _ => return pos,
        }
    }
}

/// The fields of one object read so far. serde refuses an object that names a field twice, so
/// the scanner leaves such an object to serde.
#[derive(Default)]
pub(crate) struct Seen(u32);

impl Seen {
    /// `None` when `field` (below 32) was read before.
    pub(crate) fn first_time(&mut self, field: u32) -> Option<()> {
        let bit = 1 << field;
        (self.0 & bit == 0).then(|| self.0 |= bit)
    }
}

/// The index of the first `"`, `\` or control character in `bytes`, eight bytes at a time.
#[inline]
fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let zero_after = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        // A byte below 0x20, or equal to `"` or `\` (the lowest flagged byte is exact).
        let found = (v.wrapping_sub(ONES * 0x20) & !v & HIGH) | zero_after(v ^ QUOTES) | zero_after(v ^ BACKSLASHES);
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

/// What the readers' differential tests share: the check that the scanner reads what serde
/// reads, and the edits that make a text unusual or invalid.
#[cfg(test)]
pub(crate) mod differential {
    use proptest::test_runner::TestCaseError;

    /// `scanned` (the scanner's reading of `text`), when there is one, is serde's; `Ok(true)`
    /// when there is one.
    pub(crate) fn agrees<'a, T>(text: &'a str, scanned: Option<T>) -> Result<bool, TestCaseError>
    where
        T: serde::Deserialize<'a> + PartialEq + std::fmt::Debug,
    {
        let Some(scanned) = scanned else {
            return Ok(false);
        };
        let serde: T =
            serde_json::from_str(text).map_err(|e| TestCaseError::fail(format!("serde refused {text:?}: {e}")))?;
        proptest::prop_assert_eq!(scanned, serde, "{}", text);
        Ok(true)
    }

    /// `text` as it is, cut at `at`, or with a backslash, whitespace, a comma or a quote put in
    /// at `at`, or with one of `replacements` made (a key named twice, an escaped key …).
    pub(crate) fn edit(text: &str, kind: u8, at: usize, replacements: &[(&str, &str)]) -> String {
        let at = at % (text.len() + 1);
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let (head, tail) = text.split_at(at);
        match usize::from(kind) % (6 + replacements.len()) {
            0 => text.to_owned(),
            1 => head.to_owned(),
            2 => format!("{head}\\{tail}"),
            3 => format!("{head} \n\t{tail}"),
            4 => format!("{head},{tail}"),
            5 => format!("{head}\"{tail}"),
            k => {
                let (from, to) = replacements[k - 6];
                text.replacen(from, to, 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bytes_are_found_where_they_are() {
        for len in 0..40 {
            for at in 0..len {
                for byte in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut text = vec![b'a'; len];
                    // Bytes around the special one that must not count: high bytes, 0x20, 0x7f.
                    if at > 0 {
                        text[at - 1] = 0xc3;
                    }
                    if at + 1 < len {
                        text[at + 1] = b' ';
                    }
                    text[at] = byte;
                    assert_eq!(special(&text), Some(at), "{len} {at} {byte}");
                }
            }
            assert_eq!(special(&vec![0x7f; len]), None);
            assert_eq!(special(&vec![0xe2; len]), None);
        }
    }

    #[test]
    fn whitespace_ends_at_the_first_other_byte() {
        // Indentation of every length around a word's width, after a line break or not, ending
        // in a byte next to a space (0x1f, 0x21, 0xa0), a NUL, a structural byte, or the end.
        for len in 0..40 {
            for lead in ["", "\n", "\r\n", "\t", " \t"] {
                for end in [&b"\""[..], b"}", b"\x1f", b"!", b"\xa0", b"\0", b""] {
                    let mut text = vec![b'x'];
                    text.extend_from_slice(lead.as_bytes());
                    text.extend(std::iter::repeat_n(b' ', len));
                    text.extend_from_slice(end);
                    let expected = 1 + lead.len() + len;
                    assert_eq!(after_whitespace(&text, 1), expected, "{lead:?} {len} {end:?}");
                }
            }
        }
        // Spaces broken by other whitespace inside a word.
        assert_eq!(after_whitespace(b"   \n     \t  \r\n  a", 0), 16);
        assert_eq!(after_whitespace(b"a", 0), 0);
    }

    #[test]
    fn skipped_values_are_json_or_refused() {
        let good = [
            r#""a\"b\\c\/\b\f\n\r\t\u00e9\uD83D""#,
            "-0",
            "0.5",
            "-12.75e+3",
            "1E-9",
            "[]",
            "[1, [2, {}], {\"a\": null}]",
            "{\"a\": true, \"b\": false, \"c\": [\"x\"]}",
            "  {}  ",
        ];
        for text in good {
            let mut s = Scanner::new(text);
            assert_eq!(s.skip_value(), Some(()), "{text}");
            assert!(s.at_end(), "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(), "{text}");
        }
        let bad = [
            "\"a",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\u{1}\"",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "[1 2]",
            "tru",
            "nul",
            "{,}",
            "[,1]",
            "NaN",
        ];
        for text in bad {
            let mut s = Scanner::new(text);
            let skipped = s.skip_value().is_some() && s.at_end();
            assert!(!skipped, "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_err(), "{text}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert_eq!(Scanner::new(&deep).skip_value(), None);
    }

    #[test]
    fn unsigned_numbers_are_plain_integers_only() {
        for (text, want) in [
            ("0", Some(0)),
            ("42", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("-1", None),
            ("01", None),
            ("1.0", None),
            ("1e3", None),
            ("\"1\"", None),
            ("7}", Some(7)),
        ] {
            assert_eq!(Scanner::new(text).unsigned(), want, "{text}");
        }
    }
}
