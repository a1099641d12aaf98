//! The names of everything the cluster keeps in Redis: per room, its meta
//! hash (epoch, last offset), its history stream, its pub/sub channel and
//! its presence; per node, a channel for pushes to its connections; and
//! one channel every node hears.
//!
//! A room's keys share a hash tag (`{room}`), so they live on one shard
//! should Redis ever be a Redis Cluster, as the publish script requires.

/// A room's meta hash: `epoch`, `offset`.
pub(super) fn meta(room: &str) -> String {
    format!("sb:{{{room}}}:meta")
}

/// A room's history: a stream whose entry ids are `offset-0`.
pub(super) fn history(room: &str) -> String {
    format!("sb:{{{room}}}:history")
}

/// A room's pub/sub channel: its messages and presence events.
pub(super) fn channel(room: &str) -> String {
    format!("sb:{{{room}}}:channel")
}

/// A room's members: a sorted set of connection ids scored by when their
/// node's last refresh expires (milliseconds since the Unix epoch).
pub(super) fn presence(room: &str) -> String {
    format!("sb:{{{room}}}:presence")
}

/// A room's members' users: connection id to user (empty: anonymous).
pub(super) fn presence_users(room: &str) -> String {
    format!("sb:{{{room}}}:users")
}

/// The room a channel name belongs to, if it is a room's channel.
pub(super) fn room_of_channel(channel: &str) -> Option<&str> {
    channel
        .strip_prefix("sb:{")
        .and_then(|rest| rest.strip_suffix("}:channel"))
}

/// The channel of pushes for the connections of node `number`.
pub(super) fn node_channel(number: u64) -> String {
    format!("sb:node:{number}")
}

/// The claim on node number `number` (held while that node lives).
pub(super) fn node_claim(number: u64) -> String {
    format!("sb:node:{number}:claim")
}

/// A one-time token (`jti`) seen by some node, until its token expires.
pub(super) fn one_time_token(jti: &str) -> String {
    format!("sb:jti:{jti}")
}

/// Every room the cluster holds, scored by when its keys expire: what
/// `max_rooms` counts cluster-wide.
pub(super) const ROOM_INDEX: &str = "sb:rooms";

/// The channel every node hears: pushes to a user, broadcasts.
pub(super) const EVERY_NODE: &str = "sb:nodes";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_channel_names_its_room() {
        assert_eq!(room_of_channel(&channel("chat:lobby")), Some("chat:lobby"));
        assert_eq!(room_of_channel(EVERY_NODE), None);
        assert_eq!(room_of_channel(&node_channel(7)), None);
    }
}
