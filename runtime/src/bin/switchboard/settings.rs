//! From flags, environment and the config file to one [`Config`]: the
//! file first, then environment variables, then flags, each overriding
//! the one before; and the warnings about where the secret came from.

use crate::args::{ConfigArgs, ServeArgs};
use clap::ArgMatches;
use clap::parser::ValueSource;
use switchboard::config::{Config, Secret};

/// Whether the subcommand's `--jwt-secret` came from the command line
/// (not from the environment or a file).
pub(crate) fn secret_on_command_line(matches: &ArgMatches) -> bool {
    matches.subcommand().is_some_and(|(_, sub)| {
        sub.try_get_raw("jwt_secret").is_ok()
            && sub.value_source("jwt_secret") == Some(ValueSource::CommandLine)
    })
}

pub(crate) fn base_config(common: &ConfigArgs) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    // A secret given here (flag or environment) replaces the file's, in
    // either form.
    if let Some(secret) = &common.jwt_secret {
        config.jwt_secret = Some(Secret::new(secret.clone()));
        config.jwt_secret_file = None;
    }
    if let Some(file) = &common.jwt_secret_file {
        config.jwt_secret_file = Some(file.clone());
        config.jwt_secret = None;
    }
    Ok(config)
}

/// Reads `jwt_secret_file` into `jwt_secret`, warning when other users
/// can read the file.
pub(crate) fn read_secret_file(config: &mut Config) -> anyhow::Result<()> {
    if let Some(warning) = config.read_secret_file()? {
        tracing::warn!("{warning}");
    }
    Ok(())
}

pub(crate) fn serve_config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut config = base_config(&args.common)?;
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field { config.$field = v; })* };
    }
    set!(
        listen,
        actions,
        call_timeout_ms,
        max_message_bytes,
        max_batch,
        max_inflight_calls,
        max_inflight_per_connection,
        write_timeout_ms,
        shutdown_grace_ms,
        watch,
        reload_debounce_ms,
        max_generations,
        preflight_timeout_ms,
        reload_protect_retired,
        allow_unsafe_plugin_folder
    );
    set!(
        jwt_leeway_secs,
        jwt_max_lifetime_secs,
        auth_chain,
        auth_timeout_ms,
        allowed_origins,
        max_anonymous_per_address,
        outbound_queue_bytes,
        max_rooms,
        max_history_bytes,
        max_room_creations_per_minute
    );
    macro_rules! set_optional {
        ($($field:ident),*) => { $(if args.$field.is_some() { config.$field = args.$field; })* };
    }
    set_optional!(
        max_connections,
        max_anonymous_connections,
        shadow_dir,
        jwt_public_key,
        jwks_file,
        jwt_issuer,
        jwt_audience,
        auth_plugin,
        tls_cert,
        tls_key
    );
    config.validate()?;
    read_secret_file(&mut config)?;
    Ok(config)
}
