//! Fuzzes the JSON-RPC envelope and batch parser (`parse_frame`) and the
//! reply builders, checking more than "no panic":
//! - a whole-frame refusal is -32700 or -32600, and a refused item -32600;
//! - a batch holds 1..=max_batch items;
//! - an accepted request's id and params are slices of the frame (so
//!   `share` hands a long one on without a copy, and copies a short one
//!   into itself), the id is a string, number or null, the params an
//!   object or array;
//! - what was accepted is JSON whose `jsonrpc`, `id` and `method` agree
//!   with the envelope;
//! - every request, alone or in a batch, reads exactly as serde alone reads it
//!   (`parse_envelope_by_serde`): the same id, method and params (the same
//!   slices of the frame), or the same refusal, so the one-pass reader of
//!   the common shape never accepts what serde would not, nor reads it
//!   differently;
//! - every reply built from it (`reply_ok`, `reply_error`, `join_batch`)
//!   is JSON carrying the same id and the refusal's code.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard::rpc::error::ErrorCode;
use switchboard::rpc::protocol::{
    Envelope, Frame, INLINE_TEXT, Refusal, join_batch, parse_envelope_by_serde, parse_frame,
    reply_error, reply_ok, share,
};

#[path = "common/reply.rs"]
mod reply;
use reply::Reply;

const MAX_BATCH: usize = 8;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let Ok(text) = std::str::from_utf8(&frame) else {
        return;
    };
    // The frame without the whitespace JSON allows before it.
    let whole = text.trim_start_matches([' ', '\t', '\n', '\r']);
    match parse_frame(text, MAX_BATCH) {
        Frame::Refused(error) => {
            assert!(
                matches!(
                    error.code,
                    ErrorCode::ParseError | ErrorCode::InvalidRequest
                ),
                "a whole frame refused with {:?}",
                error.code
            );
            let code = check_reply(&reply_error(None, &error), "null");
            assert_eq!(code, Some(error.code.code()));
        }
        Frame::Single(item) => {
            assert_same_as_serde(&item, parse_envelope_by_serde(whole));
            check_item(&frame, text, item, Some(whole));
        }
        Frame::Batch(items) => {
            assert!(
                !items.is_empty() && items.len() <= MAX_BATCH,
                "a batch of {}",
                items.len()
            );
            let raw_items: Vec<&RawValue> = serde_json::from_str(whole).expect("a batch read");
            for (item, raw) in items.iter().zip(&raw_items) {
                assert_same_as_serde(item, parse_envelope_by_serde(raw.get()));
            }
            let replies: Vec<String> = items
                .into_iter()
                .map(|item| check_item(&frame, text, item, None))
                .collect();
            let joined = join_batch(&replies);
            json(&joined);
            let items: Vec<&RawValue> = serde_json::from_str(&joined).expect("a batch reply");
            assert_eq!(items.len(), replies.len());
        }
    }
});

/// Asserts that a request was read as serde alone reads it.
fn assert_same_as_serde(
    read: &Result<Envelope<'_>, Refusal>,
    by_serde: Result<Envelope<'_>, Refusal>,
) {
    match (read, &by_serde) {
        (Ok(read), Ok(by_serde)) => {
            let slices = |envelope: &Envelope<'_>| {
                (
                    envelope.id.map(|id| (id.as_ptr(), id.len())),
                    envelope.params.map(|p| (p.as_ptr(), p.len())),
                )
            };
            assert_eq!(slices(read), slices(by_serde), "id or params differ");
            assert_eq!(read.method, by_serde.method);
            assert_eq!(read.answer, by_serde.answer);
        }
        (Err(read), Err(by_serde)) => {
            assert_eq!(read.error.code, by_serde.error.code);
            assert_eq!(read.error.message, by_serde.error.message);
            assert_eq!(read.id.as_deref(), by_serde.id.as_deref());
        }
        _ => panic!("read {read:?}, serde alone {by_serde:?}"),
    }
}

/// Checks one parsed item and returns the reply the server could send.
/// `whole`: the item's own text, when it is the whole frame.
fn check_item(
    frame: &Bytes,
    text: &str,
    item: Result<Envelope<'_>, Refusal>,
    whole: Option<&str>,
) -> String {
    match item {
        Ok(envelope) => {
            let id = envelope.id;
            if let Some(id) = id {
                assert_inside(text, id);
                assert!(
                    id == "null"
                        || id.starts_with([
                            '"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'
                        ]),
                    "id {id}"
                );
                assert!(
                    matches!(
                        json(id),
                        None | Some(Value::String(_) | Value::Number(_) | Value::Null)
                    ),
                    "id {id}"
                );
                let shared = share(frame, text, id);
                assert_eq!(&*shared, id);
                if id.len() > INLINE_TEXT {
                    assert_eq!(shared.as_ptr(), id.as_ptr(), "a long id was copied");
                } else {
                    let frame_memory = frame.as_ptr_range();
                    assert!(
                        !frame_memory.contains(&shared.as_ptr()),
                        "a short id kept the frame"
                    );
                }
            }
            if let Some(params) = envelope.params {
                assert_inside(text, params);
                json(params);
                if envelope.answer.is_none() {
                    assert!(params.starts_with(['{', '[']), "params {params}",);
                }
            }
            if let Some(value) = whole.and_then(json) {
                assert_eq!(value["jsonrpc"], "2.0");
                if let Some(id_value) = id.and_then(json) {
                    assert_eq!(value["id"], id_value);
                }
                if envelope.answer.is_none() {
                    assert_eq!(value["method"].as_str(), Some(&*envelope.method));
                }
            }
            let id = id.unwrap_or("null");
            let result = envelope.params.unwrap_or("null");
            let reply = reply_ok(id, result);
            assert_eq!(check_reply(&reply, id), None);
            reply
        }
        Err(refusal) => {
            assert_eq!(
                refusal.error.code,
                ErrorCode::InvalidRequest,
                "a request refused with {:?}: {}",
                refusal.error.code,
                refusal.error.message
            );
            let reply_text = reply_error(refusal.id.as_deref(), &refusal.error);
            let id = refusal.id.as_deref().unwrap_or("null");
            let code = check_reply(&reply_text, id);
            assert_eq!(code, Some(refusal.error.code.code()));
            reply_text
        }
    }
}

/// Asserts that `text` is JSON (by the grammar: numbers past f64's range,
/// such as `1e999`, are JSON too) and returns it as a `Value` when it fits
/// one.
fn json(text: &str) -> Option<Value> {
    if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
        panic!("not JSON ({e}): {text}");
    }
    serde_json::from_str(text).ok()
}

/// Checks a reply built for a request with `id` (its raw text) and
/// returns its error code, if any.
fn check_reply(reply: &str, id: &str) -> Option<i64> {
    json(reply);
    let parsed: Reply<'_> = match serde_json::from_str(reply) {
        Ok(parsed) => parsed,
        Err(e) => panic!("not a JSON-RPC reply ({e}): {reply}"),
    };
    assert_eq!(parsed.jsonrpc, "2.0");
    assert_eq!(parsed.id.get(), id, "the id changed in {reply}");
    assert!(
        parsed.result.is_some() != parsed.error.is_some(),
        "result xor error: {reply}"
    );
    parsed.error.map(|e| e.code)
}

/// Asserts that `part` is a slice of `text`.
fn assert_inside(text: &str, part: &str) {
    let start = text.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    assert!(
        at >= start && at + part.len() <= start + text.len(),
        "{part} does not lie inside the frame"
    );
}
