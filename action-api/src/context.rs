//! [`Context`]: what an action knows about its call, and [`Logger`], the
//! way a plugin writes to the host's log.

use crate::abi::{HostTable, log_level};
use std::fmt::Display;

/// The caller of one action: its connection and user, and a logger.
///
/// Borrowed for the duration of the call. A deferred action that needs
/// these later copies them first ([`Context::logger`] is `Clone + Send`).
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) conn_id: u64,
    pub(crate) user: Option<&'a str>,
    pub(crate) scopes: &'a str,
    pub(crate) conn_data: Option<&'a str>,
    pub(crate) logger: Logger,
}

impl<'a> Context<'a> {
    /// The id of the calling connection, unique within the server's run.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// The signed-in user (the token's `sub` claim), or `None` for an
    /// anonymous connection calling a public action.
    pub fn user(&self) -> Option<&'a str> {
        self.user
    }

    /// The scopes of the caller's token (empty when anonymous).
    pub fn scopes(&self) -> impl Iterator<Item = &'a str> {
        self.scopes.split_whitespace()
    }

    /// Whether the caller's token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The connection data an auth plugin attached at sign-in, as JSON
    /// text, if any. Parse it with serde_json into your own type.
    pub fn connection_data(&self) -> Option<&'a str> {
        self.conn_data
    }

    /// The server's services (pushes, rooms, connection data, client calls).
    pub fn host(&self) -> crate::Host {
        self.logger.host()
    }

    /// A logger whose lines carry this call's connection id.
    pub fn logger(&self) -> Logger {
        self.logger
    }

    /// Logs at error level (see [`Logger::error`]).
    pub fn error(&self, msg: impl Display) {
        self.logger.error(msg)
    }

    /// Logs at warn level.
    pub fn warn(&self, msg: impl Display) {
        self.logger.warn(msg)
    }

    /// Logs at info level.
    pub fn info(&self, msg: impl Display) {
        self.logger.info(msg)
    }

    /// Logs at debug level.
    pub fn debug(&self, msg: impl Display) {
        self.logger.debug(msg)
    }
}

/// Writes lines into the host's `tracing` output, tagged with the plugin's
/// name and (when known) a connection id.
///
/// A plugin links its own copy of every crate, so its own `tracing` or
/// `log` macros reach no subscriber; this is the way to log.
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    host: &'static HostTable,
    conn_id: u64,
}

impl Logger {
    pub(crate) fn new(host: &'static HostTable, conn_id: u64) -> Logger {
        Logger { host, conn_id }
    }

    pub(crate) fn host(&self) -> crate::Host {
        crate::Host::new(self.host)
    }

    /// The plugin-wide logger (no connection), available once the host has
    /// loaded the plugin; `None` before that.
    pub fn global() -> Option<Logger> {
        crate::host_ref::host().map(|host| Logger::new(host, 0))
    }

    fn write(&self, level: u32, msg: impl Display) {
        crate::host_ref::host_log(self.host, level, self.conn_id, &msg.to_string())
    }

    /// Logs at error level.
    pub fn error(&self, msg: impl Display) {
        self.write(log_level::ERROR, msg)
    }

    /// Logs at warn level.
    pub fn warn(&self, msg: impl Display) {
        self.write(log_level::WARN, msg)
    }

    /// Logs at info level.
    pub fn info(&self, msg: impl Display) {
        self.write(log_level::INFO, msg)
    }

    /// Logs at debug level.
    pub fn debug(&self, msg: impl Display) {
        self.write(log_level::DEBUG, msg)
    }
}
