//! From the config file, environment and flags to one [`Config`]: the
//! file first, then environment variables, then flags, each overriding
//! the one before.

use crate::args::{ConfigFile, ServeArgs};
use clap::ArgMatches;
use clap::parser::ValueSource;
use switchboard::config::Config;

/// Whether the subcommand's `--jwt-secret` came from the command line
/// (not from the environment or a file).
pub(crate) fn secret_on_command_line(matches: &ArgMatches) -> bool {
    matches.subcommand().is_some_and(|(_, sub)| {
        sub.try_get_raw("jwt_secret").is_ok()
            && sub.value_source("jwt_secret") == Some(ValueSource::CommandLine)
    })
}

/// The config file's settings, or the defaults without one.
pub(crate) fn file_config(file: &ConfigFile) -> anyhow::Result<Config> {
    Ok(match &file.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    })
}

/// Reads `jwt_secret_file` into `jwt_secret`, warning when other users
/// can read the file.
pub(crate) fn read_secret_file(config: &mut Config) -> anyhow::Result<()> {
    if let Some(warning) = config.read_secret_file()? {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// `serve`'s settings: the file's, with the environment's and the flags'
/// on top, checked, with the secret file read.
pub(crate) fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = file_config(&args.file)?;
    args.settings.apply(&mut config)?;
    config.validate()?;
    read_secret_file(&mut config)?;
    Ok(config)
}
