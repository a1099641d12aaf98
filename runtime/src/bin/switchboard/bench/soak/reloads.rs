//! The soak's hot reloads: every few seconds one of the builds is
//! installed over the target plugin file (as `bench reload` does: beside
//! it, with a trailer that makes it a content the server has never seen,
//! then renamed into place), and the server's `actions.changed` push for
//! a new generation of that file is awaited.

use crate::bench::client::Target;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchboard::client::{Client, ClientEvent, ClientOptions};
use tokio::sync::broadcast;

/// How long a reload may take to be announced.
const RELOAD_DEADLINE: Duration = Duration::from_secs(20);

/// What to reload, and how often.
#[derive(Debug, Clone)]
pub(crate) struct ReloadPlan {
    /// The plugin file in the server's actions folder.
    pub(crate) target: PathBuf,
    /// Builds installed in turn (empty: the target as it was).
    pub(crate) builds: Vec<PathBuf>,
    /// A reload this often.
    pub(crate) every: Duration,
}

/// What the reloads did.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct ReloadFigures {
    /// Installs written.
    pub(crate) attempted: u64,
    /// Installs the server announced as a new generation.
    pub(crate) done: u64,
    /// The first that was not, and why.
    pub(crate) first_failure: Option<String>,
}

/// Reloads every `plan.every` until `end`.
pub(crate) async fn run(
    target: &Target,
    plan: ReloadPlan,
    user: usize,
    end: Instant,
) -> anyhow::Result<ReloadFigures> {
    let options = match target.token_for(user)? {
        Some(token) => ClientOptions::with_token(token),
        None => ClientOptions::default(),
    };
    let client = Client::connect(&target.url, options).await?;
    let mut events = client.events();
    let reply = client
        .call(
            "rpc.subscribe",
            serde_json::json!({"event": "actions.changed"}),
        )
        .await?;
    if reply["subscribed"] != true {
        anyhow::bail!("the server refused rpc.subscribe actions.changed: {reply}");
    }
    let mut builds = plan.builds.clone();
    let original = std::env::temp_dir().join(format!("switchboard-soak-{}.so", std::process::id()));
    if builds.is_empty() {
        std::fs::copy(&plan.target, &original).map_err(|e| {
            anyhow::anyhow!("copying the reload target {}: {e}", plan.target.display())
        })?;
        builds.push(original.clone());
    }
    let name = plan
        .target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut figures = ReloadFigures::default();
    let mut every = tokio::time::interval(plan.every);
    every.tick().await;
    loop {
        every.tick().await;
        if Instant::now() >= end {
            break;
        }
        let build = builds[figures.attempted as usize % builds.len()].clone();
        figures.attempted += 1;
        let (to, trailer) = (plan.target.clone(), figures.attempted);
        tokio::task::spawn_blocking(move || crate::bench::reload::install(&build, &to, trailer))
            .await??;
        match announced(&mut events, &name).await {
            Ok(()) => figures.done += 1,
            Err(why) => {
                figures.first_failure.get_or_insert(why);
            }
        }
    }
    let _ = std::fs::remove_file(&original);
    client.close();
    Ok(figures)
}

/// Waits for the push announcing a new generation of file `name`.
async fn announced(
    events: &mut broadcast::Receiver<ClientEvent>,
    name: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RELOAD_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                return Err(format!(
                    "no actions.changed for {name} within {RELOAD_DEADLINE:?}"
                ));
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                return Err("the control connection closed".to_owned());
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Ok(ClientEvent::Event { event, data })) if event == "actions.changed" => {
                let file = data["file"].as_str().unwrap_or_default();
                if file.ends_with(name) {
                    return if data["generation"].is_u64() {
                        Ok(())
                    } else {
                        Err(format!(
                            "the reload of {name} was not a new generation: {data}"
                        ))
                    };
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}
