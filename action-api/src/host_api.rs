//! [`Host`]: what an action can ask of the server beyond answering its
//! call: push to connections and users, publish to rooms, move
//! connections in and out of rooms, keep per-connection data, read
//! connection info, and call a method on a client and wait for its answer.
//!
//! Every method goes through the host's callback table; on a server too
//! old to offer one, it returns [`HostError::Unsupported`].

use crate::abi::{ByteView, HostTable, host_query};
use crate::error::ActionError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::ffi::c_void;
use std::time::Duration;

/// Why a host request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The server is too old to offer this.
    Unsupported(&'static str),
    /// The value could not be serialized or the answer parsed.
    Encoding(String),
    /// The server refused (a bad room name, an unknown connection).
    Refused(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Unsupported(what) => {
                write!(f, "this server does not support {what}; upgrade it")
            }
            HostError::Encoding(e) => write!(f, "could not encode or decode JSON: {e}"),
            HostError::Refused(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for HostError {}

impl From<HostError> for ActionError {
    fn from(e: HostError) -> ActionError {
        ActionError::internal(e.to_string())
    }
}

/// How a call to a client ended badly.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCallError {
    /// The client answered with an error object.
    Error(Value),
    /// No answer within the timeout.
    Timeout,
    /// No such connection.
    Gone,
    /// The host could not make the call.
    Host(HostError),
}

impl std::fmt::Display for ClientCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCallError::Error(e) => write!(f, "the client answered with an error: {e}"),
            ClientCallError::Timeout => f.write_str("the client did not answer in time"),
            ClientCallError::Gone => f.write_str("the connection is gone"),
            ClientCallError::Host(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientCallError {}

impl From<ClientCallError> for ActionError {
    fn from(e: ClientCallError) -> ActionError {
        ActionError::internal(e.to_string())
    }
}

/// A handle on the server's services. `Copy` and `Send`: keep it in a
/// thread that answers later.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    table: &'static HostTable,
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, HostError> {
    serde_json::to_vec(value).map_err(|e| HostError::Encoding(e.to_string()))
}

/// Receives bytes from a host callback into a `Vec`.
unsafe extern "C" fn collect(sink_ctx: *mut c_void, bytes: ByteView) {
    // SAFETY: `sink_ctx` is the `&mut Vec<u8>` passed next to this sink,
    // alive for the duration of the host call that invokes it; the bytes
    // live for this call.
    unsafe {
        if let Some(out) = sink_ctx.cast::<Vec<u8>>().as_mut() {
            out.extend_from_slice(bytes.as_slice());
        }
    }
}

impl Host {
    pub(crate) fn new(table: &'static HostTable) -> Host {
        Host { table }
    }

    /// The host of the running plugin, once the server has loaded it.
    pub fn get() -> Option<Host> {
        crate::host_ref::host().map(Host::new)
    }

    /// Pushes `{"method": "rpc.event", "params": {"event", "data"}}` to one
    /// connection; `Ok(false)` if it is gone or too slow to take it.
    pub fn send(&self, conn_id: u64, event: &str, data: impl Serialize) -> Result<bool, HostError> {
        let f = self
            .table
            .send_to_conn
            .ok_or(HostError::Unsupported("sending to connections"))?;
        let data = json(&data)?;
        // SAFETY: the host's callback, with its own context and views that
        // outlive the call.
        Ok(unsafe {
            f(
                self.table.host_ctx,
                conn_id,
                ByteView::of(event.as_bytes()),
                ByteView::of(&data),
            )
        } == 1)
    }

    /// Pushes an event to every connection of `user`; returns how many.
    pub fn send_to_user(
        &self,
        user: &str,
        event: &str,
        data: impl Serialize,
    ) -> Result<u64, HostError> {
        let f = self
            .table
            .send_to_user
            .ok_or(HostError::Unsupported("sending to users"))?;
        let data = json(&data)?;
        // SAFETY: as in `send`.
        Ok(unsafe {
            f(
                self.table.host_ctx,
                ByteView::of(user.as_bytes()),
                ByteView::of(event.as_bytes()),
                ByteView::of(&data),
            )
        })
    }

    /// Pushes an event to every connection except `except`; returns how many.
    pub fn broadcast(
        &self,
        event: &str,
        data: impl Serialize,
        except: &[u64],
    ) -> Result<u64, HostError> {
        let f = self
            .table
            .broadcast
            .ok_or(HostError::Unsupported("broadcasts"))?;
        let data = json(&data)?;
        // SAFETY: as in `send`; `except` lives for the call.
        Ok(unsafe {
            f(
                self.table.host_ctx,
                ByteView::of(event.as_bytes()),
                ByteView::of(&data),
                except.as_ptr(),
                except.len(),
            )
        })
    }

    /// Pushes an event to every signed-in connection except `except`;
    /// returns how many. Anonymous connections never see it: use this for
    /// anything meant for your users rather than for the world.
    pub fn broadcast_signed_in(
        &self,
        event: &str,
        data: impl Serialize,
        except: &[u64],
    ) -> Result<u64, HostError> {
        let f = self
            .table
            .broadcast_signed_in
            .ok_or(HostError::Unsupported(
                "broadcasts to signed-in connections",
            ))?;
        let data = json(&data)?;
        // SAFETY: as in `send`; `except` lives for the call.
        Ok(unsafe {
            f(
                self.table.host_ctx,
                ByteView::of(event.as_bytes()),
                ByteView::of(&data),
                except.as_ptr(),
                except.len(),
            )
        })
    }

    /// Publishes to a room (kept in its history like a client's publish);
    /// returns the message's offset.
    pub fn publish(&self, room: &str, data: impl Serialize) -> Result<u64, HostError> {
        let f = self
            .table
            .publish
            .ok_or(HostError::Unsupported("publishing"))?;
        let data = json(&data)?;
        // SAFETY: as in `send`.
        match unsafe {
            f(
                self.table.host_ctx,
                ByteView::of(room.as_bytes()),
                ByteView::of(&data),
            )
        } {
            0 => Err(HostError::Refused(format!(
                "publishing to '{room}' was refused: not a valid room name, or a new room past \
                 the server's max_rooms (see its log)"
            ))),
            offset => Ok(offset),
        }
    }

    fn membership(&self, conn_id: u64, room: &str, join: u32) -> Result<(), HostError> {
        let f = self
            .table
            .set_membership
            .ok_or(HostError::Unsupported("server-side joins"))?;
        // SAFETY: as in `send`.
        match unsafe {
            f(
                self.table.host_ctx,
                conn_id,
                ByteView::of(room.as_bytes()),
                join,
            )
        } {
            1 => Ok(()),
            _ => Err(HostError::Refused(format!(
                "connection {conn_id} could not join or leave room '{room}'"
            ))),
        }
    }

    /// Joins a connection to a room, whatever the room's client policy.
    pub fn join(&self, conn_id: u64, room: &str) -> Result<(), HostError> {
        self.membership(conn_id, room, 1)
    }

    /// Removes a connection from a room.
    pub fn leave(&self, conn_id: u64, room: &str) -> Result<(), HostError> {
        self.membership(conn_id, room, 0)
    }

    fn query(&self, what: u32, conn_id: u64, key: &str) -> Result<Option<Value>, HostError> {
        let f = self
            .table
            .query
            .ok_or(HostError::Unsupported("connection queries"))?;
        let mut out: Vec<u8> = Vec::new();
        // SAFETY: as in `send`; `out` outlives the call and `collect`
        // matches the sink contract.
        let found = unsafe {
            f(
                self.table.host_ctx,
                what,
                conn_id,
                ByteView::of(key.as_bytes()),
                collect,
                (&mut out as *mut Vec<u8>).cast(),
            )
        };
        if found != 1 {
            return Ok(None);
        }
        serde_json::from_slice(&out)
            .map(Some)
            .map_err(|e| HostError::Encoding(e.to_string()))
    }

    /// What the server knows of a connection: `{"conn", "user",
    /// "connected_at", "remote_addr", "rooms"}`; `None` if it is gone.
    pub fn connection_info(&self, conn_id: u64) -> Result<Option<Value>, HostError> {
        self.query(host_query::CONN_INFO, conn_id, "")
    }

    /// A room's members: `[{"user", "conn"}]` (empty if nobody is in it).
    pub fn room_members(&self, room: &str) -> Result<Vec<Value>, HostError> {
        match self.query(host_query::ROOM_MEMBERS, 0, room)? {
            Some(Value::Array(members)) => Ok(members),
            _ => Ok(Vec::new()),
        }
    }

    /// The value stored under `key` for a connection, if any.
    pub fn data<T: DeserializeOwned>(
        &self,
        conn_id: u64,
        key: &str,
    ) -> Result<Option<T>, HostError> {
        match self.query(host_query::CONN_DATA, conn_id, key)? {
            None => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(|e| HostError::Encoding(e.to_string())),
        }
    }

    /// Stores `value` under `key` for a connection, until it closes.
    /// `Ok(false)` if the connection is gone.
    pub fn set_data(
        &self,
        conn_id: u64,
        key: &str,
        value: impl Serialize,
    ) -> Result<bool, HostError> {
        let f = self
            .table
            .set_conn_data
            .ok_or(HostError::Unsupported("connection data"))?;
        let value = json(&value)?;
        // SAFETY: as in `send`.
        Ok(unsafe {
            f(
                self.table.host_ctx,
                conn_id,
                ByteView::of(key.as_bytes()),
                ByteView::of(&value),
            )
        } == 1)
    }

    /// Removes the value under `key` for a connection.
    pub fn remove_data(&self, conn_id: u64, key: &str) -> Result<bool, HostError> {
        let f = self
            .table
            .set_conn_data
            .ok_or(HostError::Unsupported("connection data"))?;
        // SAFETY: as in `send`; an absent view means "delete".
        Ok(unsafe {
            f(
                self.table.host_ctx,
                conn_id,
                ByteView::of(key.as_bytes()),
                ByteView::ABSENT,
            )
        } == 1)
    }

    /// Calls `method` on the client of `conn_id` and waits for its answer:
    /// the bidirectional RPC of the seed systems. Blocks the calling thread
    /// (actions run on threads that may block) for at most `timeout`.
    pub fn call_client(
        &self,
        conn_id: u64,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<Value, ClientCallError> {
        let f = self
            .table
            .call_client
            .ok_or(ClientCallError::Host(HostError::Unsupported(
                "calls to clients",
            )))?;
        let params = json(&params).map_err(ClientCallError::Host)?;
        let mut out: Vec<u8> = Vec::new();
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: as in `query`.
        let status = unsafe {
            f(
                self.table.host_ctx,
                conn_id,
                ByteView::of(method.as_bytes()),
                ByteView::of(&params),
                millis,
                collect,
                (&mut out as *mut Vec<u8>).cast(),
            )
        };
        let answer = || {
            serde_json::from_slice::<Value>(&out)
                .map_err(|e| ClientCallError::Host(HostError::Encoding(e.to_string())))
        };
        match status {
            0 => answer(),
            1 => Err(ClientCallError::Error(answer()?)),
            2 => Err(ClientCallError::Timeout),
            _ => Err(ClientCallError::Gone),
        }
    }
}
