//! The Lua scripts that make each room operation one atomic step in
//! Redis, so offsets are gap-free and ordered per room across every node,
//! and history and live delivery never disagree.

use std::sync::LazyLock;

/// Publishes one message. KEYS: meta, history, channel, the room index.
/// ARGV: a fresh epoch (used if the room has none: new, or lost by
/// Redis), the data, the history's length bound (0 keeps none), the keys'
/// time to live in seconds, the time now in milliseconds, the room's
/// name, the cluster's most rooms. Returns `{offset, epoch}`, or
/// `{"rooms"}` when the room would be new and the cluster holds its most.
///
/// The channel carries `m <epoch> <offset> <data>`.
pub(super) static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then
    return {'rooms'}
  end
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
redis.call('ZADD', KEYS[4], tonumber(ARGV[5]) + tonumber(ARGV[4]) * 1000, ARGV[6])
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 't', ARGV[5], 'd', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', KEYS[3], 'm ' .. epoch .. ' ' .. offset .. ' ' .. ARGV[2])
return {offset, epoch}
",
    )
});

/// A connection joins a room, and reads what it needs at one instant.
/// KEYS: meta, history, presence, users. ARGV: a fresh epoch (as for
/// publish), the offset the client last saw (-1: none), the room keys'
/// time to live in seconds, most entries to return, the connection id,
/// its user (empty: anonymous), when its presence expires (ms), the
/// room's most members, now (ms), the presence keys' time to live (s),
/// whether the joiner may create the room (1) or not (0), the room's
/// name, the cluster's most rooms. KEYS also: the room index.
///
/// Returns `{"full"}` when the room has its most live members already,
/// `{"create"}` when it does not exist and the joiner may not create it,
/// `{"rooms"}` when it does not exist and the cluster holds its most;
/// else `{epoch, offset, entries after since, 1 if it was a member, 1 if
/// the room was created}`, each entry `{id, {field, value, ...}}`.
pub(super) static JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local was = redis.call('ZSCORE', KEYS[3], ARGV[5])
if not was then
  if redis.call('ZCOUNT', KEYS[3], ARGV[9], '+inf') >= tonumber(ARGV[8]) then
    return {'full'}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local created = 0
if not epoch then
  if ARGV[11] == '0' then
    return {'create'}
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[9])
  if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[13]) then
    return {'rooms'}
  end
end
redis.call('ZADD', KEYS[5], tonumber(ARGV[9]) + tonumber(ARGV[3]) * 1000, ARGV[12])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[10])
redis.call('EXPIRE', KEYS[4], ARGV[10])
if not epoch then
  created = 1
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local entries = {}
local since = tonumber(ARGV[2])
if since >= 0 and since < offset then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', ARGV[4])
end
local member = 0
if was then member = 1 end
return {epoch, offset, entries, member, created}
",
    )
});

/// Reads a room's history after an offset (a catch-up after the node
/// lost its subscription for a while). KEYS: meta, history. ARGV: the
/// offset, most entries. Returns `{epoch or false, offset, entries}`.
pub(super) static READ: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local entries = {}
local since = tonumber(ARGV[1])
if epoch and since < offset then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch or false, offset, entries}
",
    )
});

/// Removes a member. KEYS: presence, users. ARGV: the connection id.
/// Returns its user (`false` if it was not a member; empty: anonymous).
/// Only the caller that removed it gets the user, so one leave event is
/// sent, whoever notices first (its node, or another node expiring it).
pub(super) static LEAVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return false
end
local user = redis.call('HGET', KEYS[2], ARGV[1]) or ''
redis.call('HDEL', KEYS[2], ARGV[1])
return user
",
    )
});
