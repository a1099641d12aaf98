//! `switchboard token`: mints a client token, signed with the server's
//! secret or with a private key.

use crate::args::TokenArgs;
use crate::settings::{file_config, read_secret_file};
use anyhow::{Context, bail};
use std::time::Duration;
use switchboard::auth::mint::NewToken;
use switchboard::auth::{TokenMinter, dev_secret, random_secret};

pub(crate) fn token(args: TokenArgs) -> anyhow::Result<()> {
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let minter = match &args.key {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("could not read the key {}", path.display()))?;
            TokenMinter::from_private_pem(&pem, args.kid.clone())
                .with_context(|| format!("{}", path.display()))?
        }
        None => {
            let mut config = file_config(&args.file)?;
            args.secret.apply(&mut config);
            config.validate()?;
            read_secret_file(&mut config)?;
            match config.jwt_secret {
                Some(secret) => TokenMinter::hs256(secret.expose().as_bytes()),
                None => TokenMinter::hs256(dev_secret()?.as_bytes()),
            }
        }
    };
    if args.ttl > Duration::from_secs(30 * 24 * 3600) {
        tracing::warn!(
            "a token valid for {} is refused by servers with the default jwt_max_lifetime_secs \
             (30 days); raise it on the server, or mint shorter tokens",
            humantime::format_duration(args.ttl)
        );
    }
    let jti = match args.jti.as_deref() {
        Some("auto") => Some(random_secret().context("could not make a random jti")?),
        other => other.map(str::to_owned),
    };
    let claims = NewToken {
        sub: args.sub,
        scopes: args.scopes,
        rooms: args.rooms,
        jti,
        iss: args.iss,
        aud: args.aud,
    };
    println!("{}", minter.mint(&claims, args.ttl)?);
    Ok(())
}

/// With no secret configured: the development secret a server started
/// with no key signs with (see `switchboard::auth::dev_secret`).
pub(crate) fn dev_secret() -> anyhow::Result<String> {
    let file = dev_secret::location();
    match dev_secret::load(&file)? {
        Some(secret) => {
            tracing::info!(
                file = %file.display(),
                "no secret configured: signing with the development secret (what `serve` uses with no key)"
            );
            Ok(secret)
        }
        None => bail!(
            "no secret: pass --jwt-secret-file FILE, set SWITCHBOARD_JWT_SECRET, set jwt_secret_file in \
             the config file, or sign with --key (a development secret is made at {} the first time \
             `serve` starts with no key)",
            file.display()
        ),
    }
}
