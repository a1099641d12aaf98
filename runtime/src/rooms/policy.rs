//! Room policy: the rules from the config (`[[rooms]]`), matched by room
//! name pattern, and the patterns themselves (`chat:*`, `user:{sub}`).
//!
//! A pattern is literal text with two wildcards: `*` matches any run of
//! characters, `{sub}` matches exactly the caller's user. The first rule
//! whose pattern matches a room decides; with none, the defaults apply:
//! signed-in connections may join and publish, history keeps the last 100
//! messages for 5 minutes, presence is on.

use serde::Deserialize;

/// Who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    /// Any signed-in connection (the default).
    SignedIn,
    /// Only a connection whose token's `rooms` claim has a pattern that
    /// matches the room.
    Claim,
    /// Anyone, signed in or not.
    Anyone,
    /// A signed-in connection that a plugin's join hook approves (a hook
    /// whose pattern matches the room must exist).
    Hook,
}

/// One `[[rooms]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomRule {
    /// The room names it covers (`*` and `{sub}` wildcards).
    pub pattern: String,
    /// Who may join. Default `signed_in`.
    pub join: JoinPolicy,
    /// Whether clients may `rpc.publish` (actions always may). Default true.
    pub publish: bool,
    /// Messages kept for recovery; 0 keeps none. Default 100.
    pub history_size: usize,
    /// Seconds a message is kept for recovery. Default 300.
    pub history_ttl_secs: u64,
    /// Bytes of messages kept for recovery at most. Default 1 MiB.
    pub history_max_bytes: usize,
    /// Whether `rpc.presence` lists members. Default true.
    pub presence: bool,
    /// Whether connections that may join the room but are not in it may
    /// read its presence too. Default false: members only.
    pub presence_public: bool,
    /// Whether joins and leaves are pushed to the room's members as
    /// `rpc.event` `presence.join` / `presence.leave`. Default true.
    pub presence_events: bool,
    /// Most members at once; past it joins get -32006. Default 100000.
    pub max_members: usize,
}

impl Default for RoomRule {
    fn default() -> RoomRule {
        RoomRule {
            pattern: "*".to_owned(),
            join: JoinPolicy::SignedIn,
            publish: true,
            history_size: 100,
            history_ttl_secs: 300,
            history_max_bytes: 1 << 20,
            presence: true,
            presence_public: false,
            presence_events: true,
            max_members: 100_000,
        }
    }
}

/// Whether `name` matches `pattern` for a caller signed in as `user`.
/// `{sub}` never matches for an anonymous caller.
pub fn matches(pattern: &str, name: &str, user: Option<&str>) -> bool {
    if let Some(rest) = pattern.strip_prefix('*') {
        // `*` takes any run of characters: try every split point.
        return name
            .char_indices()
            .map(|(i, _)| i)
            .chain([name.len()])
            .any(|i| matches(rest, &name[i..], user));
    }
    if let Some(rest) = pattern.strip_prefix("{sub}") {
        return match user {
            Some(user) if !user.is_empty() => name
                .strip_prefix(user)
                .is_some_and(|tail| matches(rest, tail, Some(user))),
            _ => false,
        };
    }
    match (pattern.chars().next(), name.chars().next()) {
        (None, None) => true,
        (Some(p), Some(n)) if p == n => {
            matches(&pattern[p.len_utf8()..], &name[n.len_utf8()..], user)
        }
        _ => false,
    }
}

/// Whether `name` matches `pattern` for some user: `{sub}` matches any
/// non-empty run of characters. Used to pick a room's rule, which must not
/// depend on who asks.
pub fn matches_any_user(pattern: &str, name: &str) -> bool {
    if !pattern.contains("{sub}") {
        return matches(pattern, name, None);
    }
    // `{sub}` as `*`, but never empty: try each non-empty user the name allows.
    let (before, after) = pattern.split_once("{sub}").unwrap_or((pattern, ""));
    name.strip_prefix(before).is_some_and(|rest| {
        rest.char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .any(|end| matches_any_user(after, &rest[end..]))
    })
}

/// Checks a room name: 1 to 200 bytes, no whitespace or control characters.
pub fn check_name(room: &str) -> Result<(), String> {
    if room.is_empty() || room.len() > 200 {
        return Err(format!(
            "a room name must be 1 to 200 bytes, got {}",
            room.len()
        ));
    }
    if room.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a room name may not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literals_stars_and_the_user() {
        assert!(matches("*", "anything", None));
        assert!(matches("chat:*", "chat:lobby", None));
        assert!(!matches("chat:*", "news:lobby", None));
        assert!(matches("a*b*c", "a123b45c", None));
        assert!(!matches("a*b*c", "a123b45", None));
        assert!(matches("user:{sub}", "user:alice", Some("alice")));
        assert!(!matches("user:{sub}", "user:bob", Some("alice")));
        assert!(!matches("user:{sub}", "user:alice", None));
        assert!(matches("user:{sub}:*", "user:alice:inbox", Some("alice")));
        assert!(matches("lobby", "lobby", None));
        assert!(!matches("lobby", "lobby2", None));
        assert!(matches_any_user("user:{sub}", "user:alice"));
        assert!(!matches_any_user("user:{sub}", "user:"));
        assert!(matches_any_user("user:{sub}:inbox", "user:bob:inbox"));
        assert!(!matches_any_user("user:{sub}", "news:alice"));
    }
}
