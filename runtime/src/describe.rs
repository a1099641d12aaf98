//! What `switchboard check FILE` reports about one plugin file.

use crate::plugins::refusal::RefusalKind;
use crate::plugins::services::NoServer;
use crate::plugins::{LoadedPlugin, ShadowDir};
use action_api::abi::ABI_VERSION;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// A plugin's identity and actions, as `check` prints them.
#[derive(Debug, Serialize)]
pub struct PluginReport {
    /// The file checked.
    pub file: String,
    /// Whether it loads.
    pub ok: bool,
    /// The ABI version (of the host, when it loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abi_version: Option<u32>,
    /// Plugin name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Plugin version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its actions.
    pub actions: Vec<ActionReport>,
    /// Whether it can authenticate connections (an `authenticate` hook).
    pub authenticates: bool,
    /// The lifecycle events it listens to.
    pub events: Vec<&'static str>,
    /// Why it cannot be loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of that refusal (the server's preflight reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<RefusalKind>,
}

/// One action in a [`PluginReport`].
#[derive(Debug, Serialize)]
pub struct ActionReport {
    /// Method path.
    pub path: String,
    /// Callable without a token.
    pub public: bool,
    /// The plugin's own deadline in milliseconds, if set.
    pub timeout_ms: Option<u128>,
    /// Scopes a caller's token must carry.
    pub scopes: Vec<String>,
    /// Runs on the connection's thread (never blocks, no deadline).
    pub inline: bool,
}

/// Loads `file` (through a shadow copy under `shadow_base`, or, with no
/// base, in place: for a file that is already a private copy, as the
/// server's preflight passes) and reports.
pub fn check(file: &Path, shadow_base: Option<&Path>) -> PluginReport {
    let mut report = PluginReport {
        file: file.display().to_string(),
        ok: false,
        abi_version: None,
        name: None,
        version: None,
        actions: Vec::new(),
        authenticates: false,
        events: Vec::new(),
        error: None,
        error_kind: None,
    };
    if let Some(problem) = not_a_file(file) {
        report.error = Some(problem);
        report.error_kind = Some(RefusalKind::Io);
        return report;
    }
    let failed = |e: crate::plugins::LoadError| (e.kind(), e.to_string());
    let loaded = match shadow_base {
        None => LoadedPlugin::load_in_place(file, Arc::new(NoServer)).map_err(failed),
        Some(base) => ShadowDir::create(base, false)
            .map_err(|e| {
                (
                    RefusalKind::Io,
                    format!("could not create the shadow folder {}: {e}", base.display()),
                )
            })
            .and_then(|shadow| {
                let result = LoadedPlugin::load(file, &shadow, Arc::new(NoServer)).map_err(failed);
                shadow.remove();
                result
            }),
    };
    match loaded {
        Ok(plugin) => {
            report.ok = true;
            report.abi_version = Some(ABI_VERSION);
            report.actions = plugin
                .actions
                .iter()
                .map(|a| ActionReport {
                    path: a.path.clone(),
                    public: a.public,
                    timeout_ms: a.timeout.map(|t| t.as_millis()),
                    scopes: a.scopes.clone(),
                    inline: a.inline,
                })
                .collect();
            report.authenticates = plugin.has_authenticate();
            if let Some(events) = &plugin.events {
                use crate::lifecycle::{AUTH_FAILURE, AUTH_SUCCESS, CONNECT, DISCONNECT, ERROR};
                let names = [
                    (CONNECT, "connect"),
                    (AUTH_SUCCESS, "auth_success"),
                    (AUTH_FAILURE, "auth_failure"),
                    (DISCONNECT, "disconnect"),
                    (ERROR, "error"),
                ];
                report.events = names
                    .iter()
                    .filter(|(k, _)| events.wants(*k))
                    .map(|(_, n)| *n)
                    .collect();
            }
            report.name = Some(plugin.name);
            report.version = Some(plugin.version);
        }
        Err((kind, error)) => {
            report.error = Some(error);
            report.error_kind = Some(kind);
        }
    }
    report
}

/// Why `file` cannot be a plugin file before anything is read from it:
/// it does not exist, or it is a folder.
fn not_a_file(file: &Path) -> Option<String> {
    match std::fs::metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("no such file (check the path; a plugin is the built .so file)".to_owned())
        }
        Err(e) => Some(format!("cannot read it: {e}")),
        Ok(meta) if meta.is_dir() => Some(
            "it is a folder; pass the built plugin file (e.g. target/release/libNAME.so)"
                .to_owned(),
        ),
        Ok(_) => None,
    }
}

impl std::fmt::Display for PluginReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(error) = &self.error {
            return write!(f, "{}: cannot be loaded: {error}", self.file);
        }
        writeln!(f, "file:    {}", self.file)?;
        writeln!(f, "abi:     {}", self.abi_version.unwrap_or_default())?;
        writeln!(
            f,
            "plugin:  {} {}",
            self.name.as_deref().unwrap_or("?"),
            self.version.as_deref().unwrap_or("?")
        )?;
        if self.authenticates {
            writeln!(f, "hooks:   authenticate")?;
        }
        if !self.events.is_empty() {
            writeln!(f, "events:  {}", self.events.join(", "))?;
        }
        writeln!(f, "actions:")?;
        for action in &self.actions {
            let access = if action.public {
                "public".to_owned()
            } else if action.scopes.is_empty() {
                "signed-in".to_owned()
            } else {
                format!("scopes: {}", action.scopes.join(" "))
            };
            let inline = if action.inline { ", inline" } else { "" };
            let timeout = action
                .timeout_ms
                .map(|t| format!(", timeout {t} ms"))
                .unwrap_or_default();
            writeln!(f, "  {} ({access}{inline}{timeout})", action.path)?;
        }
        Ok(())
    }
}
