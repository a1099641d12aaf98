//! Fuzzes the settings file: `Config::from_toml` (what `Config::from_file`
//! does with the file's text), then, on what parses, `validate`, and on
//! what validates, what the server makes of the settings when it starts
//! and when a connection opens: the connection bounds, the rate limits,
//! the rooms, the call and outbound-queue bounds (tokio semaphores and
//! channels, which panic past their maximum). A config that validates must
//! never make these panic, and gives non-zero timeouts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::Config;
use switchboard::limits::{ConnectionLimits, max_pending_handshakes};
use switchboard::rpc::rates::{ConnectionRates, UserRates};
use switchboard::state::local_rooms;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    let valid = config.validate();
    let _ = config.auth_timeout();
    let _ = config.shutdown_grace();
    if valid.is_err() {
        return;
    }
    assert!(!config.call_timeout().is_zero());
    assert!(!config.handshake_timeout().is_zero());
    assert!(!config.write_timeout().is_zero());
    assert!(config.max_batch > 0 && config.max_message_bytes > 0);
    assert!(!config.auth_chain.is_empty());
    assert!(
        config
            .jwt_secret
            .as_ref()
            .is_none_or(|s| s.expose().len() >= 16)
    );
    for open_files in [None, Some(1024), Some(u64::MAX)] {
        let (limits, _warnings) = ConnectionLimits::resolve(&config, open_files);
        assert!(limits.max_connections > 0);
        let _ = max_pending_handshakes(&config, &limits);
    }
    let _ = ConnectionRates::new(&config);
    let _ = UserRates::new(config.user_message_rate, config.user_message_burst);
    let _ = local_rooms(&config);
    // As `ServerState::new` (the server's call slots), `Session::new` (a
    // connection's) and the connection task (its outbound queue) build
    // them.
    let _ = tokio::sync::Semaphore::new(config.max_inflight_calls);
    let _ = tokio::sync::Semaphore::new(config.max_inflight_per_connection);
    let _ = tokio::sync::mpsc::channel::<()>(config.outbound_queue);
});
