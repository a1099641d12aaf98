//! Connection limits that follow from the machine: every connection holds
//! an open file, so the process's open-file limit (raised to its hard
//! limit at start, [`crate::sys::raise_open_file_limit`]) bounds how many
//! one server can keep. [`ConnectionLimits::resolve`] turns the settings and
//! that limit into the bounds in force, with a warning for each setting
//! the limit cannot honour.

use crate::config::Config;

/// Files kept free for everything that is not a WebSocket: the listener,
/// the runtime's own descriptors, plugin files and their preflight pipes,
/// the folder watch, HTTP requests such as `/healthz` and `/status`. At
/// least this many; see [`connections_allowed`].
const MIN_HEADROOM: u64 = 64;

/// The most connections the default allows, however high the open-file
/// limit (containers and systemd often allow a million or more): the
/// scale the server is measured at. A setting may go higher.
const DEFAULT_CAP: usize = 100_000;

/// The bounds on connections in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most open WebSocket connections.
    pub max_connections: usize,
    /// Most open connections that have not signed in.
    pub max_anonymous: usize,
    /// Most connections that have not signed in, per address.
    pub max_anonymous_per_address: usize,
    /// The open-file limit they were derived from, if it could be read.
    pub open_files: Option<u64>,
}

/// How many connections `open_files` descriptors can carry with headroom
/// to spare: a twentieth of them, and at least `MIN_HEADROOM`, stay free
/// (19,000 connections of 20,000 files; 448 of 512).
pub fn connections_allowed(open_files: u64) -> usize {
    let headroom = (open_files / 20).max(MIN_HEADROOM);
    usize::try_from(open_files.saturating_sub(headroom)).unwrap_or(usize::MAX)
}

impl ConnectionLimits {
    /// The bounds for `config` in a process that may open `open_files`
    /// files (`None`: unknown, so the settings are taken as they are, with
    /// 50,000 connections when none is set). With no setting, what the
    /// limit carries, at most `DEFAULT_CAP`. Returns the warnings to log:
    /// a `max_connections` the limit cannot carry is lowered to what it
    /// can.
    pub fn resolve(config: &Config, open_files: Option<u64>) -> (ConnectionLimits, Vec<String>) {
        let mut warnings = Vec::new();
        let allowed = open_files.map(connections_allowed);
        let max_connections = match (config.max_connections, allowed) {
            (Some(set), Some(allowed)) if set > allowed => {
                warnings.push(format!(
                    "max_connections = {set} is more than the open-file limit ({} files, see `ulimit -n`) \
                     can carry; using {allowed}. Raise the limit (e.g. LimitNOFILE= in a systemd unit) \
                     to hold more",
                    open_files.unwrap_or_default()
                ));
                allowed
            }
            (Some(set), _) => set,
            (None, Some(allowed)) => allowed.min(DEFAULT_CAP),
            (None, None) => 50_000,
        };
        let max_anonymous = config
            .max_anonymous_connections
            .unwrap_or(max_connections.div_ceil(4))
            .min(max_connections);
        let limits = ConnectionLimits {
            max_connections: max_connections.max(1),
            max_anonymous,
            max_anonymous_per_address: config.max_anonymous_per_address,
            open_files,
        };
        (limits, warnings)
    }
}

/// The fewest and the most connections not yet upgraded that the
/// default allows at once.
const PENDING_DEFAULT_RANGE: (usize, usize) = (16, 4096);

/// The bound on connections not (yet) upgraded to a WebSocket (see
/// [`Config::max_pending_handshakes`]): the setting, or by default half
/// the files `open_files` leaves beside `max_connections` (the other half
/// stays for everything else), within [`PENDING_DEFAULT_RANGE`]; 1024
/// when the open-file limit is unknown.
pub fn max_pending_handshakes(config: &Config, limits: &ConnectionLimits) -> usize {
    if let Some(set) = config.max_pending_handshakes {
        return set;
    }
    let (least, most) = PENDING_DEFAULT_RANGE;
    match limits.open_files {
        Some(files) => {
            let spare = usize::try_from(files)
                .unwrap_or(usize::MAX)
                .saturating_sub(limits.max_connections);
            (spare / 2).clamp(least, most)
        }
        None => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_a_twentieth_and_at_least_64() {
        assert_eq!(connections_allowed(20_000), 19_000);
        assert_eq!(connections_allowed(512), 448);
        assert_eq!(connections_allowed(10), 0);
    }

    #[test]
    fn settings_above_the_file_limit_are_lowered_with_a_warning() {
        let mut config = Config::default();
        let (limits, warnings) = ConnectionLimits::resolve(&config, Some(512));
        assert_eq!(limits.max_connections, 448);
        assert_eq!(limits.max_anonymous, 112);
        assert!(warnings.is_empty());
        let (limits, _) = ConnectionLimits::resolve(&config, Some(u64::MAX));
        assert_eq!(limits.max_connections, DEFAULT_CAP);
        config.max_connections = Some(1000);
        let (limits, warnings) = ConnectionLimits::resolve(&config, Some(512));
        assert_eq!(limits.max_connections, 448);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        config.max_connections = Some(100);
        config.max_anonymous_connections = Some(500);
        let (limits, _) = ConnectionLimits::resolve(&config, Some(512));
        assert_eq!((limits.max_connections, limits.max_anonymous), (100, 100));
    }

    #[test]
    fn pending_handshakes_get_half_the_files_left_beside_connections() {
        let mut config = Config::default();
        let (limits, _) = ConnectionLimits::resolve(&config, Some(20_000));
        assert_eq!(max_pending_handshakes(&config, &limits), 500);
        let (limits, _) = ConnectionLimits::resolve(&config, Some(512));
        assert_eq!(max_pending_handshakes(&config, &limits), 32);
        config.max_connections = Some(100);
        let (limits, _) = ConnectionLimits::resolve(&config, Some(1_000_000));
        assert_eq!(max_pending_handshakes(&config, &limits), 4096);
        let (limits, _) = ConnectionLimits::resolve(&config, None);
        assert_eq!(max_pending_handshakes(&config, &limits), 1024);
        config.max_pending_handshakes = Some(7);
        assert_eq!(max_pending_handshakes(&config, &limits), 7);
    }
}
