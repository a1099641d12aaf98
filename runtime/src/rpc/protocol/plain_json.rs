//! Where a plain JSON token or value ends, checked against JSON's grammar
//! on the way: the scanning under the one-pass reader ([`super::one_pass`]).
//!
//! "Plain" is JSON without what is rarer and costlier to check: a string
//! holding an escape (`\`), and containers nested more than
//! [`MAX_DEPTH`] deep. Each function gives `None` for those and for
//! anything that is not JSON, and the caller then leaves the whole frame
//! to serde_json, which reads or refuses it. So these never need to be
//! right about what they refuse, only about what they accept: whatever
//! they accept is JSON, as serde_json reads it (the `rpc_frame` fuzz
//! target compares the two on every input it makes).

/// How deeply containers may nest in a plain value (one bit each in
/// [`value_end`]'s stack).
pub(super) const MAX_DEPTH: u32 = 64;

/// The first index from `at` that is not JSON whitespace.
pub(super) fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The index after the string starting at `at` (its opening quote), if
/// it has no escape and no control character (a string with an escape
/// is not plain, and one with a control character is not JSON).
pub(super) fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let rest = bytes.get(at + 1..)?;
    let length = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[length] != b'"' {
        return None;
    }
    // A fold, not an early exit: it compiles to vector compares.
    let controls = rest[..length]
        .iter()
        .fold(false, |found, &byte| found | (byte < 0x20));
    (!controls).then_some(at + 1 + length + 1)
}

/// The index after the number starting at `at`, by JSON's grammar:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. What follows
/// it is the caller's to check (`01` ends after the `0`).
pub(super) fn number_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let digits = |from: usize| {
        let count = bytes.get(from..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        });
        (count > 0).then_some(from + count)
    };
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match bytes.get(at)? {
        b'0' => at + 1,
        b'1'..=b'9' => digits(at)?,
        _ => return None,
    };
    if bytes.get(at) == Some(&b'.') {
        at = digits(at + 1)?;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        at = digits(at)?;
    }
    Some(at)
}

/// The index after `word` (`true`, `false` or `null`) at `at`.
pub(super) fn literal_end(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    bytes
        .get(at..)?
        .starts_with(word)
        .then_some(at + word.len())
}

/// The index after the plain JSON value starting at `at` (no whitespace
/// before it). What follows it is the caller's to check.
pub(super) fn value_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    // The containers open around `at`, innermost in the lowest bit: 1 for
    // an object, 0 for an array.
    let mut open: u64 = 0;
    let mut depth = 0;
    loop {
        // A value starts at `at`.
        match *bytes.get(at)? {
            container @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return None;
                }
                let object = container == b'{';
                open = open << 1 | u64::from(object);
                depth += 1;
                at = skip_whitespace(bytes, at + 1);
                let close = if object { b'}' } else { b']' };
                if bytes.get(at) == Some(&close) {
                    open >>= 1;
                    depth -= 1;
                    at += 1;
                } else {
                    // Its first member or element comes next.
                    if object {
                        at = name_end(bytes, at)?;
                    }
                    continue;
                }
            }
            b'"' => at = string_end(bytes, at)?,
            b't' => at = literal_end(bytes, at, b"true")?,
            b'f' => at = literal_end(bytes, at, b"false")?,
            b'n' => at = literal_end(bytes, at, b"null")?,
            _ => at = number_end(bytes, at)?,
        }
        // A value ended at `at`: close the containers it ends, then go on
        // to the next member or element, if any.
        loop {
            if depth == 0 {
                return Some(at);
            }
            at = skip_whitespace(bytes, at);
            let in_object = open & 1 == 1;
            match (bytes.get(at)?, in_object) {
                (b',', _) => {
                    at = skip_whitespace(bytes, at + 1);
                    if in_object {
                        at = name_end(bytes, at)?;
                    }
                    break;
                }
                (b'}', true) | (b']', false) => {
                    open >>= 1;
                    depth -= 1;
                    at += 1;
                }
                _ => return None,
            }
        }
    }
}

/// The index of the value after a member's name starting at `at` (its
/// quote), the name's colon and any whitespace around it.
fn name_end(bytes: &[u8], at: usize) -> Option<usize> {
    let at = skip_whitespace(bytes, string_end(bytes, at)?);
    (bytes.get(at) == Some(&b':')).then(|| skip_whitespace(bytes, at + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether serde_json reads `text` as one JSON value.
    fn is_json(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn plain_values_are_read_to_their_end() {
        for value in [
            "{}",
            "[]",
            r#"{"pad":"xxxx"}"#,
            r#"{ "a" : [ 1 , -2.5e+3 , true , false , null , "é" ] , "b" : { } }"#,
            "[[[[[]]]],[{}],0,-0,1E9,0.5]",
            "\"\"",
            "12",
        ] {
            let text = format!("{value},");
            assert_eq!(value_end(text.as_bytes(), 0), Some(value.len()), "{value}");
            assert!(is_json(value), "{value}");
        }
        let deepest = "[".repeat(64) + &"]".repeat(64);
        assert_eq!(value_end(deepest.as_bytes(), 0), Some(deepest.len()));
    }

    #[test]
    fn anything_else_is_not_read() {
        for text in [
            "",
            "{",
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{1:2}"#,
            "[1 2]",
            "[01]",
            "[1.]",
            "[-]",
            "[.5]",
            "[1e]",
            "[tru]",
            "[nul]",
            "[truex]",
            "[\"a\u{1}\"]",
            "[1}",
            "{\"a\":1]",
            // JSON, but not plain: an escape, nesting past the limit.
            r#"["a\"b"]"#,
            r#"{"\u0061":1}"#,
        ] {
            let end = value_end(text.as_bytes(), 0);
            // A prefix that is a whole value is fine ("[1" never is).
            assert!(
                end.is_none_or(|end| end < text.len() && is_json(&text[..end])),
                "{text}: {end:?}"
            );
            assert!(end.is_none() || !text.starts_with(['{', '[']), "{text}");
        }
        let too_deep = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(value_end(too_deep.as_bytes(), 0), None);
    }
}
