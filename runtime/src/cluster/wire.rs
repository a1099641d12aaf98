//! What travels on the cluster's pub/sub channels, as text: a letter for
//! the kind, then its fields separated by single spaces, the last field
//! (a JSON frame or data) taking the rest.
//!
//! - room channel: `m <epoch> <offset> <data>` (a message; written by the
//!   publish script), `e <conn> <frame>` (an event for the room's members
//!   but `conn`: presence);
//! - a node's channel: `c <conn> <frame>` (a push to one connection);
//! - every node's channel: `u <origin> <user-json> <frame>` (to a user's
//!   connections), `b <origin> <signed-in-only 0|1> <except-json> <frame>`
//!   (to every connection); `origin` is the sending node's number (it
//!   delivered to its own connections already).

/// One message heard on a channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard<'a> {
    /// A room's message.
    Message {
        /// The room's epoch.
        epoch: &'a str,
        /// Its offset.
        offset: u64,
        /// Its data, raw JSON.
        data: &'a str,
    },
    /// An event for a room's members except `except`.
    Event {
        /// The connection not to tell (0: none).
        except: u64,
        /// The `rpc.event` frame.
        frame: &'a str,
    },
    /// A push to one connection.
    ToConn {
        /// The connection.
        conn: u64,
        /// The frame.
        frame: &'a str,
    },
    /// A push to every connection of a user.
    ToUser {
        /// The node that sent it.
        origin: u64,
        /// The user.
        user: String,
        /// The frame.
        frame: &'a str,
    },
    /// A push to every connection.
    Broadcast {
        /// The node that sent it.
        origin: u64,
        /// Only signed-in connections.
        signed_in_only: bool,
        /// Connections left out.
        except: Vec<u64>,
        /// The frame.
        frame: &'a str,
    },
}

/// Reads one channel payload; `None` if it is not one of ours.
pub(super) fn parse(payload: &str) -> Option<Heard<'_>> {
    let (kind, rest) = payload.split_once(' ')?;
    match kind {
        "m" => {
            let (epoch, rest) = rest.split_once(' ')?;
            let (offset, data) = rest.split_once(' ')?;
            Some(Heard::Message {
                epoch,
                offset: offset.parse().ok()?,
                data,
            })
        }
        "e" => {
            let (except, frame) = rest.split_once(' ')?;
            Some(Heard::Event {
                except: except.parse().ok()?,
                frame,
            })
        }
        "c" => {
            let (conn, frame) = rest.split_once(' ')?;
            Some(Heard::ToConn {
                conn: conn.parse().ok()?,
                frame,
            })
        }
        "u" => {
            let (origin, rest) = rest.split_once(' ')?;
            let (user, frame) = split_json(rest)?;
            Some(Heard::ToUser {
                origin: origin.parse().ok()?,
                user: serde_json::from_str(user).ok()?,
                frame,
            })
        }
        "b" => {
            let (origin, rest) = rest.split_once(' ')?;
            let (flag, rest) = rest.split_once(' ')?;
            let (except, frame) = split_json(rest)?;
            Some(Heard::Broadcast {
                origin: origin.parse().ok()?,
                signed_in_only: flag == "1",
                except: serde_json::from_str(except).ok()?,
                frame,
            })
        }
        _ => None,
    }
}

/// Splits a leading JSON value (a string or an array, which may hold
/// spaces, so it is read as JSON) from the rest.
fn split_json(text: &str) -> Option<(&str, &str)> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    stream.next()?.ok()?;
    let end = stream.byte_offset();
    let rest = text.get(end..)?.strip_prefix(' ')?;
    Some((&text[..end], rest))
}

/// `e`: an event for a room's members but `except`.
pub(super) fn event(except: u64, frame: &str) -> String {
    format!("e {except} {frame}")
}

/// `c`: a push to one connection.
pub(super) fn to_conn(conn: u64, frame: &str) -> String {
    format!("c {conn} {frame}")
}

/// `u`: a push to a user's connections.
pub(super) fn to_user(origin: u64, user: &str, frame: &str) -> String {
    let user = serde_json::to_string(user).unwrap_or_else(|_| "\"\"".to_owned());
    format!("u {origin} {user} {frame}")
}

/// `b`: a push to every connection.
pub(super) fn broadcast(origin: u64, signed_in_only: bool, except: &[u64], frame: &str) -> String {
    let except = serde_json::to_string(except).unwrap_or_else(|_| "[]".to_owned());
    format!("b {origin} {} {except} {frame}", u8::from(signed_in_only))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_kind_reads_back() {
        assert_eq!(
            parse(r#"m ab12 7 {"x": "a b"}"#),
            Some(Heard::Message {
                epoch: "ab12",
                offset: 7,
                data: r#"{"x": "a b"}"#
            })
        );
        assert_eq!(
            parse(&event(3, "{}")),
            Some(Heard::Event {
                except: 3,
                frame: "{}"
            })
        );
        assert_eq!(
            parse(&to_conn(9, "{ }")),
            Some(Heard::ToConn {
                conn: 9,
                frame: "{ }"
            })
        );
        assert_eq!(
            parse(&to_user(4, "ann lee", "{}")),
            Some(Heard::ToUser {
                origin: 4,
                user: "ann lee".to_owned(),
                frame: "{}"
            })
        );
        assert_eq!(
            parse(&broadcast(5, true, &[1, 2], "{ }")),
            Some(Heard::Broadcast {
                origin: 5,
                signed_in_only: true,
                except: vec![1, 2],
                frame: "{ }"
            })
        );
        assert_eq!(parse("x 1 2"), None);
        assert_eq!(parse("m e notanumber {}"), None);
    }
}
