//! The `switchboard` binary: `serve` (the server), `dev` (serve, and
//! rebuild plugins on save), `token` (mint a client token), `check`
//! (inspect a plugin file) and `bench` (load-test a server). Each command
//! lives in a module of its own; the server itself is the library's.

mod args;
mod bench;
mod bench_command;
mod check;
mod dev;
mod serve;
mod settings;
mod token;

use args::{Cli, Command};
use clap::{CommandFactory, FromArgMatches};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Runs the command; an error it returns is a message for the person at
/// the terminal, printed as one line (its causes joined with ": ") with
/// no backtrace, whatever `RUST_BACKTRACE` says. Panics still print theirs.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        args::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
        args::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    if settings::secret_on_command_line(&matches) {
        tracing::warn!(
            "the JWT secret was given with --jwt-secret: every user of this machine can read it in the \
             process list (/proc/<pid>/cmdline). Use --jwt-secret-file FILE (mode 0600) or \
             SWITCHBOARD_JWT_SECRET instead"
        );
    }
    match cli.command {
        Command::Serve(args) => serve::serve(*args),
        Command::Dev(args) => serve::dev(*args),
        Command::Token(args) => token::token(*args),
        Command::Check(args) => check::check(args),
        Command::Bench(args) => bench_command::bench(*args),
    }
}
