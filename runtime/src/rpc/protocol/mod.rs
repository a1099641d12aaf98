//! JSON-RPC 2.0 envelopes: parse only what routing needs, build replies by
//! splicing raw JSON, never re-encoding params or results.
//!
//! Parsing borrows from the frame: `id` and `params` (their JSON text)
//! point into it, and [`share`] turns them into reference-
//! counted slices of the frame's own buffer ([`FrameText`]), so params
//! reach a plugin without a copy, and text validated once (when the frame
//! came in) is never validated again. The common request is read in one
//! pass (`one_pass`); anything else, and every refusal, through serde.

mod one_pass;

use crate::rpc::error::{ErrorCode, RpcError};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::borrow::Cow;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One parsed request or notification, borrowing from the frame.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The `id` as its JSON text (a string with its quotes, a number or
    /// `null`), or `None` for a notification.
    pub id: Option<&'a str>,
    /// The method (action path or built-in).
    pub method: Cow<'a, str>,
    /// The `params` as JSON text, or `None` when absent or `null`; for an
    /// answer, the `result` or `error`.
    pub params: Option<&'a str>,
    /// Set when this is a client's answer to a server call, not a request.
    pub answer: Option<Answer>,
}

/// Which member a client's answer to a server call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `result`.
    Result,
    /// `error`.
    Error,
}

/// A frame, parsed as far as routing needs.
#[derive(Debug)]
pub enum Frame<'a> {
    /// One request or notification.
    Single(Result<Envelope<'a>, Refusal>),
    /// A batch: each element parsed on its own (JSON-RPC 2.0 section 6).
    Batch(Vec<Result<Envelope<'a>, Refusal>>),
    /// The whole frame was refused; the reply goes back with `id: null`.
    Refused(RpcError),
}

/// A request refused before dispatch, with the id to answer (if one could
/// be read).
#[derive(Debug)]
pub struct Refusal {
    /// The id to answer with; `None` answers with `null`.
    pub id: Option<FrameText>,
    /// Why it was refused.
    pub error: RpcError,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// Keeps `"id": null` apart from a missing id: a present field is `Some`
/// whatever its value (serde maps a plain `Option` of null to `None`).
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A string borrowed from the frame (copied only when it has escapes), or
/// `None` for `null`. Serde's own `Option<Cow<str>>` always copies, which
/// would cost two allocations per request (`jsonrpc` and `method`).
fn borrowed_str<'de, D>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct BorrowedStr;
    impl<'de> serde::de::Visitor<'de> for BorrowedStr {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(BorrowedStr)
}

/// Parses a text frame. The returned envelopes borrow from `text`.
pub fn parse_frame(text: &str, max_batch: usize) -> Frame<'_> {
    // JSON's whitespace only: a frame starting with other Unicode
    // whitespace (a no-break space, a form feed) is not JSON.
    let trimmed = text.trim_start_matches(JSON_WHITESPACE);
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = match serde_json::from_str(trimmed) {
            Ok(items) => items,
            Err(e) => {
                return Frame::Refused(RpcError::new(
                    ErrorCode::ParseError,
                    format!("parse error: {e}"),
                ));
            }
        };
        if items.is_empty() {
            return Frame::Refused(RpcError::new(
                ErrorCode::InvalidRequest,
                "invalid request: empty batch",
            ));
        }
        if items.len() > max_batch {
            return Frame::Refused(RpcError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid request: a batch holds at most {max_batch} calls, this one has {}",
                    items.len()
                ),
            ));
        }
        return Frame::Batch(
            items
                .into_iter()
                .map(|item| parse_envelope(item.get()))
                .collect(),
        );
    }
    match parse_envelope(trimmed) {
        Err(refusal) if refusal.error.code == ErrorCode::ParseError => {
            Frame::Refused(refusal.error)
        }
        single => Frame::Single(single),
    }
}

/// The whitespace JSON allows between tokens.
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// Reads one request: the common shape in one pass ([`one_pass`]),
/// anything else (and every refusal) through serde.
fn parse_envelope(json: &str) -> Result<Envelope<'_>, Refusal> {
    match one_pass::read(json) {
        Some(envelope) => Ok(envelope),
        None => parse_envelope_by_serde(json),
    }
}

/// Reads one request through serde alone, whatever its shape. Public only
/// for the fuzz target that checks the one-pass reader against it.
#[doc(hidden)]
pub fn parse_envelope_by_serde(json: &str) -> Result<Envelope<'_>, Refusal> {
    let raw: RawEnvelope<'_> = match serde_json::from_str(json) {
        Ok(raw) => raw,
        Err(e) => return Err(refuse_unparsable(json, e)),
    };
    let id = match raw.id {
        Some(id) if !is_valid_id(id.get()) => {
            return Err(Refusal {
                id: None,
                error: RpcError::new(
                    ErrorCode::InvalidRequest,
                    "invalid request: id must be a string, a number or null",
                ),
            });
        }
        id => id.map(RawValue::get),
    };
    let refuse = |message: &str| Refusal {
        id: id.map(owned_id),
        error: RpcError::new(
            ErrorCode::InvalidRequest,
            format!("invalid request: {message}"),
        ),
    };
    if raw.jsonrpc.as_deref() != Some("2.0") {
        return Err(refuse("\"jsonrpc\" must be \"2.0\""));
    }
    let Some(method) = raw.method else {
        // Server calls have string ids starting with "s": anything else
        // cannot be an answer to one.
        let server_call = id.is_some_and(|id| id.starts_with("\"s"));
        return match (raw.result, raw.error) {
            (Some(result), None) if server_call => Ok(Envelope {
                id,
                method: Cow::Borrowed(""),
                params: Some(result.get()),
                answer: Some(Answer::Result),
            }),
            (None, Some(error)) if server_call => Ok(Envelope {
                id,
                method: Cow::Borrowed(""),
                params: Some(error.get()),
                answer: Some(Answer::Error),
            }),
            (None, None) => Err(refuse("\"method\" is missing")),
            _ => Err(refuse(
                "this server has made no call with that id to answer",
            )),
        };
    };
    let params = match raw.params {
        Some(params) if params.get() == "null" => None,
        Some(params) if !params.get().starts_with(['{', '[']) => {
            return Err(refuse("\"params\" must be an object or an array"));
        }
        params => params.map(RawValue::get),
    };
    Ok(Envelope {
        id,
        method,
        params,
        answer: None,
    })
}

/// Tells a frame that is not JSON (-32700) from JSON that is not a request
/// (-32600), and recovers the id when the object has a usable one.
fn refuse_unparsable(json: &str, error: serde_json::Error) -> Refusal {
    if serde_json::from_str::<IgnoredAny>(json).is_err() {
        return Refusal {
            id: None,
            error: RpcError::new(ErrorCode::ParseError, format!("parse error: {error}")),
        };
    }
    let id = serde_json::from_str::<IdOnly<'_>>(json)
        .ok()
        .and_then(|v| v.id)
        .map(RawValue::get)
        .filter(|id| is_valid_id(id))
        .map(owned_id);
    let reason = if json.starts_with('{') {
        format!("invalid request: {error}")
    } else {
        "invalid request: a request must be a JSON object".to_owned()
    };
    Refusal {
        id,
        error: RpcError::new(ErrorCode::InvalidRequest, reason),
    }
}

/// Whether an id's JSON text is a string, a number or `null`.
fn is_valid_id(id: &str) -> bool {
    matches!(id.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) || id == "null"
}

/// Copies an id for a refusal (the error path, where a copy costs nothing).
fn owned_id(id: &str) -> FrameText {
    FrameText::copy(id)
}

/// A piece of a frame's text (an id, params) kept past the frame's
/// handling: a short one (most ids, small params) is copied into the value
/// itself, a longer one shared with the frame's buffer rather than copied.
/// Always UTF-8: it is only ever made from a `&str`, so it reads as text
/// without being validated again.
#[derive(Clone)]
pub struct FrameText(Piece);

/// The longest text a [`FrameText`] holds in itself; a longer one shares
/// the frame's buffer.
pub const INLINE_TEXT: usize = 30;

/// Where a [`FrameText`]'s bytes are.
#[derive(Clone)]
enum Piece {
    /// In the value: the first `len` bytes. Copying 30 bytes costs less
    /// than sharing the frame: no allocation (a buffer's first share
    /// allocates its reference count), no atomic counts taken and given
    /// back, and the frame's buffer is freed as soon as it is handled.
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    /// A slice of a shared buffer (or a copy of a long text).
    Shared(Bytes),
}

impl FrameText {
    /// A copy of `text` (when there is no frame to share).
    pub fn copy(text: &str) -> FrameText {
        FrameText::inline(text)
            .unwrap_or_else(|| FrameText(Piece::Shared(Bytes::copy_from_slice(text.as_bytes()))))
    }

    /// `text` held in the value itself, if it is short enough.
    fn inline(text: &str) -> Option<FrameText> {
        let len = text.len();
        if len > INLINE_TEXT {
            return None;
        }
        let mut bytes = [0; INLINE_TEXT];
        bytes[..len].copy_from_slice(text.as_bytes());
        Some(FrameText(Piece::Inline {
            len: len as u8,
            bytes,
        }))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        let bytes = match &self.0 {
            Piece::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Piece::Shared(bytes) => bytes,
        };
        // SAFETY: made only from a `&str`'s bytes: `inline` copies a whole
        // one, `copy` copies one, and `share` slices `frame` only where it
        // is the very memory of `frame_str` and `part` lies within it.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl PartialEq for FrameText {
    fn eq(&self, other: &FrameText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for FrameText {}

impl std::ops::Deref for FrameText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for FrameText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The sub-slice `part` of the shared buffer `frame`: copied into the
/// value when short, else shared without copying. `frame_str` is the text
/// of `frame` (the same memory), and `part` a slice of it; otherwise `part`
/// is copied.
pub fn share(frame: &Bytes, frame_str: &str, part: &str) -> FrameText {
    if let Some(short) = FrameText::inline(part) {
        return short;
    }
    let same_memory = frame.as_ptr() == frame_str.as_ptr() && frame.len() == frame_str.len();
    let start = (part.as_ptr() as usize).wrapping_sub(frame_str.as_ptr() as usize);
    if same_memory && start <= frame.len() && start + part.len() <= frame.len() {
        FrameText(Piece::Shared(frame.slice(start..start + part.len())))
    } else {
        FrameText::copy(part)
    }
}

/// The frame a request was read from: parts of it are sliced out as
/// [`FrameText`] only when they must outlive the frame's handling (a call
/// answered later), so a call answered at once takes no reference to it.
#[derive(Debug, Clone, Copy)]
pub enum FrameSource<'a> {
    /// The frame's buffer, and its text (the same memory).
    Shared {
        /// The buffer.
        frame: &'a Bytes,
        /// Its text.
        text: &'a str,
    },
    /// A text frame as tungstenite delivered it.
    Text(&'a Utf8Bytes),
    /// A frame in a buffer that is not kept: parts are copied.
    Copied,
}

impl FrameSource<'_> {
    /// `part` (a slice of the frame's text) as a [`FrameText`] of its own.
    pub fn share(self, part: &str) -> FrameText {
        match self {
            FrameSource::Shared { frame, text } => share(frame, text, part),
            // A short part is copied before the frame is cloned for it.
            FrameSource::Text(text) => FrameText::inline(part).unwrap_or_else(|| {
                let frame: Bytes = text.clone().into();
                share(&frame, text.as_str(), part)
            }),
            FrameSource::Copied => FrameText::copy(part),
        }
    }
}

const OK_HEAD: &str = r#"{"jsonrpc":"2.0","id":"#;

/// A server push: `{"jsonrpc":"2.0","method":"rpc.event","params":{"event","data"}}`.
pub fn event_push(event: &str, data: &serde_json::Value) -> String {
    serde_json::json!({"jsonrpc": "2.0", "method": "rpc.event", "params": {"event": event, "data": data}})
        .to_string()
}

const RESULT_KEY: &str = r#","result":"#;

/// The length of a success reply's head for `id` (`{"jsonrpc":"2.0",
/// "id":<id>,"result":`): the room to leave before a result so that
/// [`reply_ok_around`] makes the reply in the result's own buffer.
pub fn reply_head_len(id: &str) -> usize {
    OK_HEAD.len() + id.len() + RESULT_KEY.len()
}

/// A success reply made around `result` (JSON). When `result` begins
/// with [`reply_head_len`] spaces (the room a plugin's answer is copied in
/// after), the head is written over them and the reply is made in the
/// result's own buffer; otherwise it is made in a new one ([`reply_ok`]).
pub fn reply_ok_around(id: &str, mut result: String) -> String {
    let head_len = reply_head_len(id);
    /// As many spaces as the head of a reply with an id of 96 bytes;
    /// compared at once (a longer id's reply is made in a new buffer).
    const SPACES: [u8; 128] = [b' '; 128];
    let roomy = SPACES
        .get(..head_len)
        .is_some_and(|spaces| result.as_bytes().starts_with(spaces));
    if roomy {
        let id_at = OK_HEAD.len();
        let key_at = id_at + id.len();
        // SAFETY: the first `head_len` bytes are ASCII spaces, each a
        // character of its own, and they are overwritten by three whole
        // `str`s exactly `head_len` bytes long in all; the bytes after
        // them are untouched and begin on a character boundary. The string
        // stays UTF-8. (`replace_range` would be safe, but goes through
        // `splice`: several times the cost of the whole call here.)
        let bytes = unsafe { result.as_mut_vec() };
        bytes[..id_at].copy_from_slice(OK_HEAD.as_bytes());
        bytes[id_at..key_at].copy_from_slice(id.as_bytes());
        bytes[key_at..head_len].copy_from_slice(RESULT_KEY.as_bytes());
        result.push('}');
        return result;
    }
    reply_ok(id, &result)
}

/// A success reply: `result` is spliced in as it is (it must be JSON).
/// Sized exactly, so a frame takes the buffer as it is.
pub fn reply_ok(id: &str, result: &str) -> String {
    let mut out = String::with_capacity(reply_head_len(id) + result.len() + 1);
    out.push_str(OK_HEAD);
    push_id(&mut out, id);
    out.push_str(RESULT_KEY);
    out.push_str(result);
    out.push('}');
    out
}

/// An error reply whose error object is already JSON (an action's own).
pub fn reply_error_object(id: Option<&str>, error_object: &str) -> String {
    let mut out = String::with_capacity(OK_HEAD.len() + error_object.len() + 24);
    out.push_str(OK_HEAD);
    push_id(&mut out, id.unwrap_or("null"));
    out.push_str(r#","error":"#);
    out.push_str(error_object);
    out.push('}');
    out
}

/// An error reply from the runtime.
pub fn reply_error(id: Option<&str>, error: &RpcError) -> String {
    reply_error_object(id, &error_object(error.code.code(), &error.message))
}

/// `{"code":..,"message":..}` with the message JSON-escaped.
pub fn error_object(code: i64, message: &str) -> String {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    format!(r#"{{"code":{code},"message":{message}}}"#)
}

fn push_id(out: &mut String, id: &str) {
    out.push_str(id);
}

/// Joins reply objects into one batch reply (`[a,b,...]`).
pub fn join_batch(replies: &[String]) -> String {
    let mut out = String::with_capacity(replies.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, reply) in replies.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(reply);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(text: &str) -> Result<Envelope<'_>, Refusal> {
        match parse_frame(text, 10) {
            Frame::Single(s) => s,
            other => panic!("expected a single request, got {other:?}"),
        }
    }

    #[test]
    fn null_id_is_kept_apart_from_no_id() {
        let with_null =
            single(r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#).map(|e| e.id.map(str::to_owned));
        assert_eq!(with_null.ok(), Some(Some("null".to_owned())));
        let without = single(r#"{"jsonrpc":"2.0","method":"m"}"#).map(|e| e.id.is_none());
        assert_eq!(without.ok(), Some(true));
    }

    #[test]
    fn params_stay_raw() {
        let env = single(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a": [1, 2.50]}}"#);
        assert_eq!(
            env.ok()
                .and_then(|e| e.params.map(str::to_owned))
                .as_deref(),
            Some(r#"{"a": [1, 2.50]}"#)
        );
    }

    #[test]
    fn escaped_method_names_are_decoded() {
        let env = single(r#"{"jsonrpc":"2.0","id":1,"method":"echo\/sleep"}"#);
        assert_eq!(
            env.ok().map(|e| e.method.into_owned()).as_deref(),
            Some("echo/sleep")
        );
    }

    #[test]
    fn plain_method_names_are_borrowed_and_null_ones_refused() {
        let env = single(r#"{"jsonrpc":"2.0","id":1,"method":"echo"}"#);
        assert!(matches!(env.map(|e| e.method), Ok(Cow::Borrowed("echo"))));
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            r#"{"jsonrpc":null,"id":1,"method":"echo"}"#,
        ] {
            let refusal = single(text).err().map(|r| (r.id, r.error.code));
            assert_eq!(
                refusal,
                Some((Some(FrameText::copy("1")), ErrorCode::InvalidRequest)),
                "{text}"
            );
        }
    }

    #[test]
    fn refusals_keep_the_id_when_they_can() {
        let refusal = single(r#"{"jsonrpc":"2.0","id":"x","method":5}"#).err();
        let refusal = refusal.map(|r| (r.id, r.error.code));
        assert_eq!(
            refusal,
            Some((Some(FrameText::copy("\"x\"")), ErrorCode::InvalidRequest))
        );
    }

    #[test]
    fn not_json_is_a_parse_error_and_oversized_batches_are_refused() {
        assert!(
            matches!(parse_frame("{nope", 10), Frame::Refused(e) if e.code == ErrorCode::ParseError)
        );
        // Only JSON's whitespace may come first: not a no-break space or a
        // form feed (Rust's `trim_start` would take both).
        for lead in ["\u{a0}", "\u{c}", "\u{2028}"] {
            let frame = format!(r#"{lead}{{"jsonrpc":"2.0","id":1,"method":"m"}}"#);
            assert!(
                matches!(parse_frame(&frame, 10), Frame::Refused(e) if e.code == ErrorCode::ParseError),
                "{frame:?}"
            );
        }
        assert!(matches!(
            parse_frame(" \t\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}", 10),
            Frame::Single(Ok(_))
        ));
        let batch = format!("[{}]", ["1"; 11].join(","));
        assert!(
            matches!(parse_frame(&batch, 10), Frame::Refused(e) if e.code == ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn share_slices_long_parts_without_copying() {
        let frame = Bytes::from_static(br#"{"params":{"key":"a value of some length"}}"#);
        let text = std::str::from_utf8(&frame).unwrap_or_default();
        let part = &text[10..text.len() - 1];
        assert!(part.len() > INLINE_TEXT);
        let shared = share(&frame, text, part);
        assert_eq!(&*shared, r#"{"key":"a value of some length"}"#);
        assert_eq!(shared.as_ptr(), frame[10..].as_ptr());
        // Text that is not the frame's own memory is copied, never sliced.
        let elsewhere = String::from(text);
        let copied = share(&frame, &elsewhere, &elsewhere[10..text.len() - 1]);
        assert_eq!(copied, shared);
        assert_ne!(copied.as_ptr(), frame[10..].as_ptr());
    }

    #[test]
    fn short_parts_are_held_in_the_value_up_to_the_limit() {
        let long = "x".repeat(INLINE_TEXT + 1);
        let framed = format!("[\"{long}\"]");
        let frame = Bytes::from(framed);
        let text = std::str::from_utf8(&frame).unwrap_or_default();
        for len in [0, 1, INLINE_TEXT] {
            let part = &text[2..2 + len];
            let held = share(&frame, text, part);
            assert_eq!(&*held, part);
            assert_eq!(held, FrameText::copy(part));
            let outside = frame.as_ptr_range();
            assert!(
                !outside.contains(&held.as_ptr()) || len == 0,
                "len {len}: sliced"
            );
        }
        let part = &text[2..2 + INLINE_TEXT + 1];
        let shared = share(&frame, text, part);
        assert_eq!(&*shared, long);
        assert_eq!(
            shared.as_ptr(),
            frame[2..].as_ptr(),
            "past the limit: sliced"
        );
        // Multi-byte text keeps its bytes whole.
        let accented = "é".repeat(INLINE_TEXT / 2);
        assert_eq!(&*FrameText::copy(&accented), accented);
    }

    #[test]
    fn replies_splice_raw_json() {
        assert_eq!(
            reply_ok("7", r#"{"a":1}"#),
            r#"{"jsonrpc":"2.0","id":7,"result":{"a":1}}"#
        );
        // With the room left for it: made in the result's buffer, filled
        // exactly.
        let id = r#""an id""#;
        let room = reply_head_len(id);
        let mut result = String::with_capacity(room + 7 + 1);
        result.push_str(&" ".repeat(room));
        result.push_str(r#"{"a":1}"#);
        let (buffer, capacity) = (result.as_ptr(), result.capacity());
        let around = reply_ok_around(id, result);
        assert_eq!(around, r#"{"jsonrpc":"2.0","id":"an id","result":{"a":1}}"#);
        assert_eq!(around.as_ptr(), buffer, "made in the result's own buffer");
        assert_eq!(around.len(), capacity, "filled exactly");
        // Without it (or with too little), the head goes in front.
        assert_eq!(reply_ok_around("1", "2".to_owned()), reply_ok("1", "2"));
        assert_eq!(
            reply_ok_around("12", format!("{}[]", " ".repeat(reply_head_len("1")))),
            format!(
                r#"{{"jsonrpc":"2.0","id":12,"result":{}[]}}"#,
                " ".repeat(reply_head_len("1"))
            )
        );
        let err = reply_error(None, &RpcError::new(ErrorCode::MethodNotFound, "no \"x\""));
        assert_eq!(
            err,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"no \"x\""}}"#
        );
    }

    #[test]
    fn answers_to_server_calls_parse() {
        let Frame::Single(Ok(env)) =
            parse_frame(r#"{"jsonrpc":"2.0","id":"s1","result":{"yes":true}}"#, 10)
        else {
            panic!("not an answer")
        };
        assert_eq!(env.answer, Some(Answer::Result));
        assert_eq!(env.id, Some("\"s1\""));
    }
}
