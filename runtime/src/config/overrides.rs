//! The settings given as flags or environment variables, laid over a
//! [`Config`] read from a file: [`SettingOverrides`] (all of them, for
//! `serve` and `dev`) and [`SecretOverrides`] (the JWT secret alone, for
//! commands that only sign tokens).
//!
//! Both keep clap's matches and lay them over a config on
//! [`apply`](SettingOverrides::apply): a setting neither flag nor
//! environment gives keeps the file's value (or its default), so the file,
//! the environment and the flags each override the one before.

use super::{Config, Secret};
use clap::{ArgMatches, Args, Command, FromArgMatches};
use std::path::PathBuf;

/// Every setting of [`Config`] as a flag with an environment variable.
/// `#[command(flatten)]` it into a subcommand.
#[derive(Debug, Clone)]
pub struct SettingOverrides(ArgMatches);

impl SettingOverrides {
    /// Whether flag or environment gave `setting` (a field name of
    /// [`Config`]).
    pub fn gives(&self, setting: &str) -> bool {
        self.0.try_contains_id(setting).unwrap_or(false)
    }

    /// Lays the settings given here over `config`. A secret given here
    /// replaces the file's, in either form (value or file).
    pub fn apply(&self, config: &mut Config) -> Result<(), clap::Error> {
        config.update_from_arg_matches(&self.0)?;
        replace_secret(&self.0, config);
        Ok(())
    }
}

impl FromArgMatches for SettingOverrides {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(SettingOverrides(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl Args for SettingOverrides {
    fn augment_args(command: Command) -> Command {
        // Every flag optional: what is not given keeps the file's value.
        Config::augment_args_for_update(command)
    }

    fn augment_args_for_update(command: Command) -> Command {
        Config::augment_args_for_update(command)
    }
}

/// The two secret settings of [`Config`] (`jwt_secret`,
/// `jwt_secret_file`), flags and environment variables as `serve` has
/// them. `#[command(flatten)]` it into a subcommand.
#[derive(Debug, Clone)]
pub struct SecretOverrides(ArgMatches);

/// The settings [`SecretOverrides`] takes from [`Config`].
const SECRET_SETTINGS: [&str; 2] = ["jwt_secret", "jwt_secret_file"];

impl SecretOverrides {
    /// Lays the secret given here over `config`, replacing the file's in
    /// either form.
    pub fn apply(&self, config: &mut Config) {
        if let Ok(Some(secret)) = self.0.try_get_one::<Secret>("jwt_secret") {
            config.jwt_secret = Some(secret.clone());
        }
        if let Ok(Some(file)) = self.0.try_get_one::<PathBuf>("jwt_secret_file") {
            config.jwt_secret_file = Some(file.clone());
        }
        replace_secret(&self.0, config);
    }
}

impl FromArgMatches for SecretOverrides {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(SecretOverrides(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl Args for SecretOverrides {
    fn augment_args(command: Command) -> Command {
        let all = Config::augment_args_for_update(Command::new("settings"));
        all.get_arguments()
            .filter(|arg| SECRET_SETTINGS.contains(&arg.get_id().as_str()))
            .fold(command, |command, arg| command.arg(arg.clone()))
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

/// A secret given in one form drops the file's secret in the other.
fn replace_secret(matches: &ArgMatches, config: &mut Config) {
    let given = |id| matches.try_contains_id(id).unwrap_or(false);
    if given("jwt_secret") {
        config.jwt_secret_file = None;
    }
    if given("jwt_secret_file") {
        config.jwt_secret = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        settings: SettingOverrides,
    }

    #[derive(Debug, clap::Parser)]
    struct Token {
        #[command(flatten)]
        secret: SecretOverrides,
    }

    fn serve(args: &[&str]) -> SettingOverrides {
        use clap::Parser;
        Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .expect("the flags parse")
            .settings
    }

    #[test]
    fn a_flag_overrides_the_file_and_what_is_not_given_keeps_it() {
        let mut config: Config = toml::from_str(
            "max_batch = 7\nmax_rooms = 9\nwatch = false\nallowed_origins = [\"https://a.example\"]",
        )
        .expect("the file parses");
        let given = serve(&["--max-rooms", "11", "--auth-chain", "plugin,jwt"]);
        assert!(given.gives("max_rooms") && !given.gives("max_batch"));
        given.apply(&mut config).expect("applies");
        assert_eq!(config.max_rooms, 11);
        assert_eq!(config.max_batch, 7);
        assert!(!config.watch);
        assert_eq!(config.allowed_origins, ["https://a.example"]);
        assert_eq!(
            config.auth_chain,
            [super::super::AuthStep::Plugin, super::super::AuthStep::Jwt]
        );
    }

    #[test]
    fn a_bool_setting_takes_a_value_and_has_no_implicit_default() {
        let mut config = Config::default();
        serve(&[]).apply(&mut config).expect("applies");
        assert!(config.watch);
        serve(&["--watch", "false"])
            .apply(&mut config)
            .expect("applies");
        assert!(!config.watch);
    }

    #[test]
    fn a_secret_given_in_one_form_replaces_the_files_in_the_other() {
        let mut config = Config {
            jwt_secret_file: Some("/etc/secret".into()),
            ..Config::default()
        };
        serve(&["--jwt-secret", "0123456789abcdef"])
            .apply(&mut config)
            .expect("applies");
        assert_eq!(
            config.jwt_secret.as_ref().map(Secret::expose),
            Some("0123456789abcdef")
        );
        assert_eq!(config.jwt_secret_file, None);

        use clap::Parser;
        let token = Token::try_parse_from(["token", "--jwt-secret-file", "/run/s"])
            .expect("the flags parse");
        token.secret.apply(&mut config);
        assert_eq!(config.jwt_secret_file, Some(PathBuf::from("/run/s")));
        assert!(config.jwt_secret.is_none());
        assert!(
            Token::try_parse_from(["token", "--max-rooms", "1"]).is_err(),
            "token takes the secret settings only"
        );
    }

    #[test]
    fn every_setting_has_the_flag_and_variable_its_name_gives() {
        let command = Config::augment_args(Command::new("serve"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            assert_eq!(
                arg.get_long(),
                Some(id.replace('_', "-").as_str()),
                "flag of {id}"
            );
            let env = format!("SWITCHBOARD_{}", id.to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "environment variable of {id}"
            );
        }
    }

    #[test]
    fn the_readme_documents_every_setting_with_its_flag_and_variable() {
        let readme = include_str!("../../../README.md");
        let command = Config::augment_args(Command::new("serve"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let row = format!("| `{id}` | `--{}", id.replace('_', "-"));
            let env = format!("`SWITCHBOARD_{}`", id.to_uppercase());
            let line = readme
                .lines()
                .find(|line| line.starts_with(&row))
                .unwrap_or_else(|| panic!("README's configuration reference has no row for {id}"));
            assert!(line.contains(&env), "README's row for {id} names {env}");
        }
    }
}
