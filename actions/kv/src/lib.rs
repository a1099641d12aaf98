//! `kv`: a small in-memory key-value and counter store, showing typed
//! params, typed errors and shared plugin state.
//!
//! - `kv/set` `{key, value}` -> `{"previous": old value or null}`
//! - `kv/get` `{key}` -> the value, or null
//! - `kv/delete` `{key}` -> `{"deleted": true|false}`
//! - `kv/incr` `{key, by?}` -> `{"value": n}` (refused with 1001 if the key holds a non-integer)
//! - `kv/keys` `{prefix?}` -> sorted keys
//!
//! Every action needs a signed-in caller; each write is logged with its user.

use action_api::{Action, ActionError, Context, Plugin, Value, export_plugin};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The longest key accepted.
const MAX_KEY_BYTES: usize = 256;
/// How many keys the store holds at most.
const MAX_KEYS: usize = 100_000;

/// Code for "the key holds something that is not an integer".
const NOT_AN_INTEGER: i64 = 1001;
/// Code for "the store is full".
const STORE_FULL: i64 = 1002;

static STORE: Mutex<BTreeMap<String, Value>> = Mutex::new(BTreeMap::new());

fn store() -> MutexGuard<'static, BTreeMap<String, Value>> {
    // A panic while holding the lock cannot leave the map half-updated
    // (every update is a single insert or remove), so poison is harmless.
    STORE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyParams {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetParams {
    key: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrParams {
    key: String,
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeysParams {
    #[serde(default)]
    prefix: String,
}

#[derive(Serialize)]
struct Previous {
    previous: Option<Value>,
}

#[derive(Serialize)]
struct Deleted {
    deleted: bool,
}

#[derive(Serialize)]
struct Counter {
    value: i64,
}

fn check_key(key: &str) -> Result<(), ActionError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ActionError::invalid_params(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn room_for(map: &BTreeMap<String, Value>, key: &str) -> Result<(), ActionError> {
    if map.len() >= MAX_KEYS && !map.contains_key(key) {
        return Err(ActionError::new(
            STORE_FULL,
            format!("the store is full ({MAX_KEYS} keys); delete some first"),
        ));
    }
    Ok(())
}

fn set(ctx: &Context<'_>, p: SetParams) -> Result<Previous, ActionError> {
    check_key(&p.key)?;
    let mut map = store();
    room_for(&map, &p.key)?;
    ctx.debug(format_args!("{} set {}", ctx.user().unwrap_or("-"), p.key));
    Ok(Previous {
        previous: map.insert(p.key, p.value),
    })
}

fn get(_ctx: &Context<'_>, p: KeyParams) -> Result<Option<Value>, ActionError> {
    check_key(&p.key)?;
    Ok(store().get(&p.key).cloned())
}

fn delete(_ctx: &Context<'_>, p: KeyParams) -> Result<Deleted, ActionError> {
    check_key(&p.key)?;
    Ok(Deleted {
        deleted: store().remove(&p.key).is_some(),
    })
}

fn incr(_ctx: &Context<'_>, p: IncrParams) -> Result<Counter, ActionError> {
    check_key(&p.key)?;
    let mut map = store();
    let current = match map.get(&p.key) {
        None => 0,
        Some(value) => value.as_i64().ok_or_else(|| {
            ActionError::new(
                NOT_AN_INTEGER,
                format!("key '{}' holds a non-integer value", p.key),
            )
            .with_data(value)
        })?,
    };
    let value = current.checked_add(p.by).ok_or_else(|| {
        ActionError::new(
            NOT_AN_INTEGER,
            format!("key '{}' would overflow an i64", p.key),
        )
    })?;
    room_for(&map, &p.key)?;
    map.insert(p.key, Value::from(value));
    Ok(Counter { value })
}

fn keys(_ctx: &Context<'_>, p: Option<KeysParams>) -> Result<Vec<String>, ActionError> {
    let prefix = p.unwrap_or_default().prefix;
    Ok(store()
        .range(prefix.clone()..)
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(&prefix))
        .cloned()
        .collect())
}

fn plugin() -> Plugin {
    Plugin::new("kv", env!("CARGO_PKG_VERSION"))
        .action(Action::new("kv/set", set))
        .action(Action::new("kv/get", get))
        .action(Action::new("kv/delete", delete))
        .action(Action::new("kv/incr", incr))
        .action(Action::new("kv/keys", keys))
}

export_plugin!(plugin);
