//! The common request read in one pass over its bytes, without serde's
//! field-by-field machinery.
//!
//! The shape read here is what clients send: an object whose members are
//! `"jsonrpc": "2.0"`, `"method"`, and optionally `"id"` and `"params"`,
//! in any order, with JSON whitespace between tokens, no escapes in member
//! names, the method or a string id, and no other member. An id that is a
//! number is checked against JSON's grammar here. Params are an object or
//! an array, checked here when every string in them is plain (no escape)
//! and they nest at most [`MAX_DEPTH`] deep; any other params are read,
//! and checked to be JSON, by serde_json (as a raw value). Reading the
//! envelope through serde's derived code cost about 2,000 instructions of
//! an inline call's 6,300 (callgrind, `rpc` with a 64-byte payload), most
//! of them matching member names and the generic visitors around them;
//! this reader took about 1,250, half of them serde's reading of the
//! params. Those read here ([`params_end`]) take 446 instead of 646, and
//! keep serde's reader out of the instruction cache: instruction-cache
//! misses per inline call 168 -> 114 (callgrind), calls per server
//! CPU-second +4% (eight paired runs, `rpc` 100 x 8).
//!
//! Anything else (a `null` method or params, an escape outside the
//! params, a `result` or `error`, an unknown or repeated member, anything
//! malformed) gives `None`, and the caller reads the frame with serde as
//! before: this reader never refuses, so every refusal and its message
//! stay serde's. What it accepts, serde reads the same; the `rpc_frame`
//! fuzz target checks that on every input it makes.

use super::Envelope;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The members this reader knows, one bit each (a repeated one is left to
/// serde, which refuses it).
const JSONRPC: u8 = 1;
const ID: u8 = 2;
const METHOD: u8 = 4;
const PARAMS: u8 = 8;

/// Params nested deeper than this are left to serde_json.
const MAX_DEPTH: u32 = 64;

/// Reads `json` if it has the common shape (see the module's comment),
/// else `None`.
pub(super) fn read(json: &str) -> Option<Envelope<'_>> {
    let bytes = json.as_bytes();
    let mut at = skip_whitespace(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut seen = 0u8;
    let (mut id, mut method, mut params) = (None, None, None);
    loop {
        at = skip_whitespace(bytes, at);
        let (member, name_length) = member_at(bytes.get(at..)?)?;
        if seen & member != 0 {
            return None;
        }
        seen |= member;
        at = skip_whitespace(bytes, at + name_length);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(bytes, at + 1);
        at = match member {
            JSONRPC => {
                if !starts_with(bytes.get(at..)?, br#""2.0""#) {
                    return None;
                }
                at + 5
            }
            METHOD => {
                let (name, after) = plain_string(json, at)?;
                method = Some(name);
                after
            }
            ID => {
                let after = id_end(bytes, at)?;
                id = Some(json.get(at..after)?);
                after
            }
            _ => {
                // An object or an array: `null` (no params) and anything
                // else are serde's to read or refuse.
                if !matches!(bytes.get(at), Some(b'{' | b'[')) {
                    return None;
                }
                let after = match params_end(bytes, at) {
                    Some(after) => after,
                    None => raw_value(json, at)?.1,
                };
                params = Some(json.get(at..after)?);
                after
            }
        };
        at = skip_whitespace(bytes, at);
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => break,
            _ => return None,
        }
    }
    if skip_whitespace(bytes, at + 1) != bytes.len() || seen & JSONRPC == 0 {
        return None;
    }
    Some(Envelope {
        id,
        method: Cow::Borrowed(method?),
        params,
        answer: None,
    })
}

/// The member whose name (in quotes) `rest` starts with, and the name's
/// length with its quotes.
fn member_at(rest: &[u8]) -> Option<(u8, usize)> {
    fn named<const N: usize>(rest: &[u8], member: u8, name: &[u8; N]) -> Option<(u8, usize)> {
        starts_with(rest, name).then_some((member, N))
    }
    match rest.get(1)? {
        b'j' => named(rest, JSONRPC, br#""jsonrpc""#),
        b'i' => named(rest, ID, br#""id""#),
        b'm' => named(rest, METHOD, br#""method""#),
        b'p' => named(rest, PARAMS, br#""params""#),
        _ => None,
    }
}

/// Whether `bytes` starts with `prefix`: compared as a fixed-size array,
/// which compiles to a few inline compares where a slice's `starts_with`
/// calls `memcmp` (1.5% of an inline call's time, `perf`, five per frame).
fn starts_with<const N: usize>(bytes: &[u8], prefix: &[u8; N]) -> bool {
    bytes.first_chunk::<N>() == Some(prefix)
}

/// The index after the id starting at `at`: `null`, a number, or a string
/// with no escape (anything else is serde's).
fn id_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => plain_string_end(bytes, at),
        b'n' => starts_with(bytes.get(at..)?, b"null").then_some(at + 4),
        _ => number_end(bytes, at),
    }
}

/// The index after the JSON number starting at `at`, by the grammar:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(bytes: &[u8], mut at: usize) -> Option<usize> {
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

/// The first index from `at` that is not JSON whitespace.
fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The string starting at `at` (its opening quote), without its quotes,
/// and the index after it (see [`plain_string_end`]).
fn plain_string(json: &str, at: usize) -> Option<(&str, usize)> {
    let end = plain_string_end(json.as_bytes(), at)?;
    // Both ends are at ASCII quotes: character boundaries.
    Some((json.get(at + 1..end - 1)?, end))
}

/// The index after the string starting at `at` (its opening quote), if
/// it has no escape and no control character (a string with an escape
/// must be decoded, and one with a control character is not JSON: both
/// are serde's).
fn plain_string_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = start + first_special(bytes.get(start..)?)?;
    (bytes[end] == b'"').then_some(end + 1)
}

/// Where `bytes`' first quote, backslash or control character is, looked
/// for eight bytes at a time (bytewise, a 64-byte string cost more than
/// serde_json's whole reading of the params around it).
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES * 0x80;
    let is_special = |byte: &u8| *byte == b'"' || *byte == b'\\' || *byte < 0x20;
    let mut chunks = bytes.chunks_exact(8);
    for (index, chunk) in chunks.by_ref().enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        // The high bit of each byte that is zero in `quote` or
        // `backslash`, or below 0x20 in `word` (a borrow may also mark
        // bytes above a marked one, never below it: the lowest mark is a
        // byte that is special).
        let marks = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGHS;
        if marks != 0 {
            // Little-endian: the lowest bits are the first byte.
            return Some(index * 8 + (marks.trailing_zeros() / 8) as usize);
        }
    }
    let tail = chunks.remainder();
    let done = bytes.len() - tail.len();
    tail.iter().position(is_special).map(|i| done + i)
}

/// The index after the object or array starting at `at`, if it is JSON
/// whose strings are all plain (see [`plain_string_end`]) and that nests
/// at most [`MAX_DEPTH`] deep; else `None`, and serde_json reads it
/// ([`raw_value`]), which takes any JSON and refuses the rest. So this
/// accepts only what serde_json accepts, and the same text.
fn params_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    // The containers the value at `at` is in, one bit each, the innermost
    // lowest: 1 an object, 0 an array.
    let mut enclosing: u64 = 0;
    let mut depth: u32 = 0;
    loop {
        // A value starts at `at`.
        at = match *bytes.get(at)? {
            open @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return None;
                }
                let object = open == b'{';
                at = skip_whitespace(bytes, at + 1);
                if bytes.get(at) == Some(if object { &b'}' } else { &b']' }) {
                    at + 1
                } else {
                    enclosing = enclosing << 1 | u64::from(object);
                    depth += 1;
                    if object {
                        at = member_value_at(bytes, at)?;
                    }
                    continue;
                }
            }
            b'"' => plain_string_end(bytes, at)?,
            b't' => starts_with(bytes.get(at..)?, b"true").then_some(at + 4)?,
            b'f' => starts_with(bytes.get(at..)?, b"false").then_some(at + 5)?,
            b'n' => starts_with(bytes.get(at..)?, b"null").then_some(at + 4)?,
            _ => number_end(bytes, at)?,
        };
        // After a value: the next one in its container, or the
        // container's end (and so on outwards).
        loop {
            if depth == 0 {
                return Some(at);
            }
            at = skip_whitespace(bytes, at);
            let object = enclosing & 1 == 1;
            match (bytes.get(at)?, object) {
                (b',', _) => {
                    at = skip_whitespace(bytes, at + 1);
                    if object {
                        at = member_value_at(bytes, at)?;
                    }
                    break;
                }
                (b'}', true) | (b']', false) => {
                    at += 1;
                    enclosing >>= 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// Where the value of the object member whose name starts at `at` starts:
/// after the name (a plain string), a colon and whitespace.
fn member_value_at(bytes: &[u8], at: usize) -> Option<usize> {
    let at = skip_whitespace(bytes, plain_string_end(bytes, at)?);
    (bytes.get(at) == Some(&b':')).then(|| skip_whitespace(bytes, at + 1))
}

/// The JSON value starting at `at`, read and checked by serde_json, and
/// the index after it.
fn raw_value(json: &str, at: usize) -> Option<(&RawValue, usize)> {
    let rest = json.get(at..)?;
    let mut deserializer = serde_json::Deserializer::from_str(rest);
    let raw = <&RawValue>::deserialize(&mut deserializer).ok()?;
    // The raw value is a slice of `rest` (serde_json borrows it).
    let end = (raw.get().as_ptr() as usize)
        .checked_sub(json.as_ptr() as usize)?
        .checked_add(raw.get().len())?;
    Some((raw, end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    /// An envelope's parts, the id and params as the slices of the frame
    /// they are (where they start, and their text).
    type Parts<'a> = (
        Option<(*const u8, &'a str)>,
        String,
        Option<(*const u8, &'a str)>,
    );

    fn parts<'a>(envelope: &Envelope<'a>) -> Parts<'a> {
        let slice = |part: &'a str| (part.as_ptr(), part);
        (
            envelope.id.map(slice),
            envelope.method.clone().into_owned(),
            envelope.params.map(slice),
        )
    }

    /// Asserts the one-pass reader reads `json` (or not), and that what it
    /// reads, serde reads the same, as the same slices of the frame (ids
    /// and params are shared from the frame's buffer).
    fn check(json: &str, read_here: bool) {
        let here = read(json);
        assert_eq!(here.is_some(), read_here, "read here: {json}");
        if let Some(envelope) = here {
            let by_serde = super::super::parse_envelope_by_serde(json);
            assert!(matches!(&by_serde, Ok(e) if e.answer.is_none()), "{json}");
            let by_serde = by_serde.as_ref().map(parts).ok();
            assert_eq!(Some(parts(&envelope)), by_serde, "{json}");
        }
    }

    #[test]
    fn the_common_shapes_are_read_in_one_pass() {
        for json in [
            r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":{"pad":"xxxx"}}"#,
            r#"{"jsonrpc":"2.0","id":"a-1","method":"echo/sleep","params":[1,2]}"#,
            r#"{"jsonrpc":"2.0","method":"rpc.ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#,
            r#"{"method":"m","params":{},"id":-1.5e3,"jsonrpc":"2.0"}"#,
            "{ \"jsonrpc\" : \"2.0\" ,\n\t\"id\" : 7 , \"method\" : \"m\" }\r\n ",
            r#"{"jsonrpc":"2.0","id":"é","method":"é/ü","params":{"a":"\"}"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"","params":[[[{"a":[]}]]]}"#,
            r#"{"jsonrpc":"2.0","id":0,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":-0.0,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":12.5E+7,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1e-999,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":"","method":"m"}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":\"a\u{7f}\",\"method\":\"b\u{7f}\"}",
        ] {
            check(json, true);
        }
        // Params nested past serde's depth limit for typed values (128):
        // read as raw text, by both, as before.
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        check(&deep, true);
    }

    /// Whether serde_json reads `params` whole as one value.
    fn serde_reads(params: &str) -> bool {
        serde_json::from_str::<&RawValue>(params).is_ok()
    }

    #[test]
    fn plain_params_are_checked_here_as_serde_would() {
        let deep_enough = format!("{}{}", "[".repeat(64), "]".repeat(64));
        let mut checked_here = vec![
            r#"{"pad":"xxxx"}"#,
            "[]",
            "{}",
            "[ ]",
            r#"[1,-2.5e3,true,false,null,"s",""]"#,
            r#"{"a":{"b":[{"c":[]}]},"d":"é","a":0}"#,
            "[ 1 , [ ] , { } ]",
            "{\n\"a\"\t:\r1 }",
            "[0,-0,1E+2,3e-4,0.5]",
            "[[[[[1]]]],{\"x\":[{}]}]",
        ];
        checked_here.push(&deep_enough);
        for params in checked_here {
            assert_eq!(
                params_end(params.as_bytes(), 0),
                Some(params.len()),
                "{params}"
            );
            assert!(serde_reads(params), "{params}");
            check(
                &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{params}}}"#),
                true,
            );
        }
        // JSON, but serde's to read: escapes, control characters' escapes,
        // nesting past the depth this reader keeps.
        let too_deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        for params in [r#"{"a":"\n"}"#, r#"["\u00e9"]"#, r#"{"a\"b":1}"#, &too_deep] {
            assert_eq!(params_end(params.as_bytes(), 0), None, "{params}");
            assert!(serde_reads(params), "{params}");
            check(
                &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{params}}}"#),
                true,
            );
        }
        // Not JSON: refused by serde, so not read here either.
        for params in [
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            "[01]",
            "[1.]",
            "[-]",
            "[tru]",
            "[nul]",
            "[falsy]",
            "{a:1}",
            "[1 2]",
            r#"{"a":1 "b":2}"#,
            "[\"a\u{1}\"]",
            "[",
            r#"{"a":1"#,
            "[}",
            "{]",
            "[+1]",
            "[.5]",
            "[1e]",
            "[,1]",
            "{,}",
            r#"{"a":1:2}"#,
            "[\"a]",
        ] {
            assert_eq!(params_end(params.as_bytes(), 0), None, "{params}");
            assert!(!serde_reads(params), "{params}");
            check(
                &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{params}}}"#),
                false,
            );
        }
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        for json in [
            // What serde refuses.
            "",
            "{",
            "{}",
            r#"{"jsonrpc":"2.0","id":1,"method":"m",}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m"} x"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":01,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":-,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1.,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":.5,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1e,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1e+,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":+1,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":nul,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":nullx,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":"a,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#,
            "{\"jsonrpc\":\"2.0\",\"method\":\"a\u{1}b\"}",
            "{\"jsonrpc\":\"2.0\",\"id\":\"a\u{1f}\",\"method\":\"m\"}",
            "{\"jsonrpc\":\"2.0\",\"id\":\"a\tb\",\"method\":\"m\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}
x"#,
            // What serde reads but this reader does not.
            r#"{"jsonrpc":"2.0","id":1,"method":"echo\/sleep"}"#,
            r#"{"jsonr\u0070c":"2.0","method":"m"}"#,
            r#"{"jsonrpc":"2.0","method":"m","params":null}"#,
            r#"{"jsonrpc":"2.0","method":"m","params":1}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":"a\"b","method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":"\u00e9\n","method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1] }x"#,
            r#"{"jsonrpc" :"2.0 ","method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#,
            r#"{"id":1,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":"s1","result":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","extra":1}"#,
            r#"["2.0",1,"m"]"#,
        ] {
            check(json, false);
        }
    }
}
