//! `chat`: a small real chat built on the server's rooms and host API.
//!
//! - `chat/join {room}`: joins the caller to `chat:<room>` server-side,
//!   sends it a `chat.welcome` event with who is there and the room's
//!   recent offset, and announces the arrival to the room.
//! - `chat/send {room, text}`: publishes `{from, text}` to `chat:<room>`,
//!   which the caller must have joined (kept in the room's history, so a
//!   client that reconnects with `rpc.join {since, epoch}` gets what it
//!   missed); returns the offset.
//! - `chat/nick {nick}`: sets the caller's display name (connection data).
//! - `chat/dm {to, text}`: a direct message to every connection of a user.
//! - `chat/whois {conn}`: who is on a connection that shares a chat room
//!   with the caller (user, nick, the chat rooms you share); never its
//!   address.
//! - `chat/announce {text}`: a `chat.announcement` push to every other
//!   signed-in connection (never to connections that have not signed in).
//! - `chat/ask {conn, question, timeout_ms?}`: asks a client that shares a
//!   chat room with the caller to confirm (`chat/confirm` on the client)
//!   and returns its answer.
//! - A join hook for `chat:*` rooms joined with `rpc.join`: `chat:staff-*`
//!   rooms admit only users named `staff-*`; everyone admitted gets a
//!   `chat.welcome` push.

use action_api::{Action, ActionError, Context, JoinRequest, Plugin, Value, export_plugin};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest message accepted.
const MAX_TEXT: usize = 4000;

/// Code for "not something a chat accepts" (empty or oversized text, bad nick).
const REJECTED: i64 = 2001;

fn room_name(room: &str) -> Result<String, ActionError> {
    if room.is_empty()
        || room.len() > 64
        || !room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ActionError::invalid_params(
            "room must be 1-64 letters, digits, '-' or '_'",
        ));
    }
    Ok(format!("chat:{room}"))
}

fn display_name(ctx: &Context<'_>) -> Result<String, ActionError> {
    let nick: Option<String> = ctx.host().data(ctx.conn_id(), "nick")?;
    Ok(nick
        .or_else(|| ctx.user().map(str::to_owned))
        .unwrap_or_else(|| format!("guest-{}", ctx.conn_id())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomParams {
    room: String,
}

#[derive(Serialize)]
struct Welcome {
    room: String,
    members: Vec<Value>,
}

fn join(ctx: &Context<'_>, p: RoomParams) -> Result<Welcome, ActionError> {
    let room = room_name(&p.room)?;
    enter(ctx, &room)?;
    let host = ctx.host();
    host.join(ctx.conn_id(), &room)?;
    let members = host.room_members(&room)?;
    let welcome = Welcome {
        room: room.clone(),
        members,
    };
    host.send(ctx.conn_id(), "chat.welcome", &welcome)?;
    let name = display_name(ctx)?;
    host.publish(
        &room,
        serde_json::json!({"system": format!("{name} joined")}),
    )?;
    ctx.info(format_args!("{name} joined {room}"));
    Ok(welcome)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendParams {
    room: String,
    text: String,
}

#[derive(Serialize)]
struct Sent {
    offset: u64,
}

fn checked_text(text: &str) -> Result<(), ActionError> {
    if text.trim().is_empty() || text.len() > MAX_TEXT {
        return Err(ActionError::new(
            REJECTED,
            format!("text must be 1 to {MAX_TEXT} bytes"),
        ));
    }
    Ok(())
}

/// The code for a send to a room the caller is not in.
const NOT_A_MEMBER: i64 = 2006;

fn send(ctx: &Context<'_>, p: SendParams) -> Result<Sent, ActionError> {
    let room = room_name(&p.room)?;
    enter(ctx, &room)?;
    checked_text(&p.text)?;
    // Like `rpc.publish`: only members speak, so a send can never bring a
    // room into existence (nor fill the server's history with rooms nobody
    // is in).
    let member = ctx
        .host()
        .connection_info(ctx.conn_id())?
        .is_some_and(|info| chat_rooms(&info).contains(&room));
    if !member {
        return Err(ActionError::new(
            NOT_A_MEMBER,
            format!("join {room} first (chat/join)"),
        ));
    }
    let from = display_name(ctx)?;
    let offset = ctx
        .host()
        .publish(&room, serde_json::json!({"from": from, "text": p.text}))?;
    Ok(Sent { offset })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NickParams {
    nick: String,
}

fn nick(ctx: &Context<'_>, p: NickParams) -> Result<Value, ActionError> {
    if p.nick.is_empty() || p.nick.len() > 32 || p.nick.chars().any(char::is_control) {
        return Err(ActionError::new(
            REJECTED,
            "a nick is 1 to 32 printable characters",
        ));
    }
    ctx.host().set_data(ctx.conn_id(), "nick", &p.nick)?;
    Ok(serde_json::json!({"nick": p.nick}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DmParams {
    to: String,
    text: String,
}

fn dm(ctx: &Context<'_>, p: DmParams) -> Result<Value, ActionError> {
    checked_text(&p.text)?;
    let from = display_name(ctx)?;
    let delivered = ctx.host().send_to_user(
        &p.to,
        "chat.dm",
        serde_json::json!({"from": from, "text": p.text}),
    )?;
    Ok(serde_json::json!({"delivered": delivered}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceParams {
    text: String,
}

/// Pushes `chat.announcement` to every signed-in connection but the
/// caller's.
fn announce(ctx: &Context<'_>, p: AnnounceParams) -> Result<Value, ActionError> {
    checked_text(&p.text)?;
    let from = display_name(ctx)?;
    let reached = ctx.host().broadcast_signed_in(
        "chat.announcement",
        serde_json::json!({"from": from, "text": p.text}),
        &[ctx.conn_id()],
    )?;
    Ok(serde_json::json!({"reached": reached}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnParams {
    conn: u64,
}

/// The chat rooms a connection is in, from the host's connection info.
fn chat_rooms(info: &Value) -> Vec<String> {
    info["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(Value::as_str)
                .filter(|room| room.starts_with("chat:"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The chat rooms the caller shares with connection `conn`, with that
/// connection's info; refused alike whether `conn` does not exist or
/// shares no room, so a caller learns nothing of connections outside its
/// rooms.
fn shared_rooms(ctx: &Context<'_>, conn: u64) -> Result<(Value, Vec<String>), ActionError> {
    let host = ctx.host();
    let not_near = || {
        ActionError::new(
            2002,
            format!("no connection {conn} in a chat room with you"),
        )
    };
    let mine = host
        .connection_info(ctx.conn_id())?
        .map(|info| chat_rooms(&info))
        .unwrap_or_default();
    let theirs = host.connection_info(conn)?.ok_or_else(not_near)?;
    let shared: Vec<String> = chat_rooms(&theirs)
        .into_iter()
        .filter(|room| mine.contains(room))
        .collect();
    if shared.is_empty() {
        return Err(not_near());
    }
    Ok((theirs, shared))
}

fn whois(ctx: &Context<'_>, p: ConnParams) -> Result<Value, ActionError> {
    let (info, shared) = shared_rooms(ctx, p.conn)?;
    let nick: Option<String> = ctx.host().data(p.conn, "nick")?;
    Ok(serde_json::json!({
        "conn": p.conn,
        "user": info["user"],
        "nick": nick,
        "rooms": shared,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskParams {
    conn: u64,
    question: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn ask(ctx: &Context<'_>, p: AskParams) -> Result<Value, ActionError> {
    checked_text(&p.question)?;
    shared_rooms(ctx, p.conn)?;
    let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(2_000).min(10_000));
    let asker = display_name(ctx)?;
    let answer = ctx.host().call_client(
        p.conn,
        "chat/confirm",
        serde_json::json!({"from": asker, "question": p.question}),
        timeout,
    );
    match answer {
        Ok(answer) => Ok(serde_json::json!({"answer": answer})),
        Err(action_api::ClientCallError::Timeout) => {
            Err(ActionError::new(2003, "the client did not answer in time"))
        }
        Err(action_api::ClientCallError::Error(e)) => {
            Err(ActionError::new(2004, "the client refused").with_data(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// Staff rooms (`chat:staff-*`) are for users named `staff-*`. Every way
/// into a room checks this: the join hook (for `rpc.join`) and the actions
/// that join or publish server-side, which bypass the hook.
fn may_enter(room: &str, user: Option<&str>) -> Result<(), String> {
    if room.starts_with("chat:staff-") && !user.unwrap_or("").starts_with("staff-") {
        return Err("staff rooms are for staff".to_owned());
    }
    Ok(())
}

/// The code for a refused staff room.
const STAFF_ONLY: i64 = 2005;

fn enter(ctx: &Context<'_>, room: &str) -> Result<(), ActionError> {
    may_enter(room, ctx.user()).map_err(|reason| ActionError::new(STAFF_ONLY, reason))
}

/// The join hook for every `chat:*` room: staff rooms (`chat:staff-*`)
/// only for users named `staff-*`; everyone else is welcomed with a push.
fn approve_join(req: &JoinRequest<'_>) -> Result<(), String> {
    may_enter(req.room, req.user)?;
    if let Some(host) = action_api::Host::get() {
        // A push on join; a failed push must not refuse the join.
        let _ = host.send(
            req.conn_id,
            "chat.welcome",
            serde_json::json!({"room": req.room}),
        );
    }
    Ok(())
}

fn plugin() -> Plugin {
    Plugin::new("chat", env!("CARGO_PKG_VERSION"))
        .on_join("chat:*", approve_join)
        .action(Action::new("chat/join", join))
        .action(Action::new("chat/send", send))
        .action(Action::new("chat/nick", nick))
        .action(Action::new("chat/dm", dm))
        .action(Action::new("chat/whois", whois))
        .action(Action::new("chat/announce", announce))
        .action(Action::new("chat/ask", ask).timeout(Duration::from_secs(12)))
}

export_plugin!(plugin);
