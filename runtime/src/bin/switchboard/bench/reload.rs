//! The `reload` scenario: hot-reload swap latency, and throughput during a
//! reload storm beside none.
//!
//! It alternates two builds of one plugin (`--a`, `--b`) in the server's
//! actions folder, each written beside the target and renamed into place
//! with a trailer that makes every write a content the server has never
//! seen (so each swap is a full reload, preflight included), and tells
//! the builds apart by the result of `--method` (which must differ
//! between the two, e.g. an action that reports the plugin's version).
//!
//! - Swap latency: from the rename (a completed write) to the first reply
//!   from the new build, over `--swaps` swaps. It includes the server's
//!   debounce (`reload_debounce_ms`), which the report states.
//! - Storm: one continuous load on `--method`, whose calls count towards
//!   alternating windows: steady (no swaps) and storm (swaps back to
//!   back), `--windows` of each, `--duration` of each kind in all
//!   (see [`storm`]).

use super::Report;
use super::client::Target;
use super::storm::{self, StormLoad, StormRequest};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchboard::client::{CallError, Client, ClientEvent, ClientOptions};
use tokio::sync::broadcast;

/// How long one swap may take before the scenario gives up.
const SWAP_DEADLINE: Duration = Duration::from_secs(20);

/// The `reload` scenario's settings.
#[derive(Debug, Clone)]
pub(crate) struct ReloadScenario {
    /// The plugin file in the server's actions folder that is replaced.
    pub(crate) target: PathBuf,
    /// The two builds swapped in turn.
    pub(crate) builds: [PathBuf; 2],
    /// The method whose result tells the builds apart.
    pub(crate) method: String,
    /// Swaps timed for latency.
    pub(crate) swaps: usize,
    /// Connections for the storm's load.
    pub(crate) conns: usize,
    /// Calls in flight per connection for the storm's load.
    pub(crate) inflight: usize,
    /// How long each half of the storm (steady, swapping) measures in all.
    pub(crate) duration: Duration,
    /// Steady and storm windows alternate this many times, splitting
    /// `duration`, so a drift of the machine falls on both alike.
    pub(crate) windows: usize,
}

/// What the `reload` scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct ReloadReport {
    /// Swaps timed.
    pub(crate) swaps: usize,
    /// Median swap latency (write to first new reply), ms.
    pub(crate) swap_p50_ms: f64,
    /// 99th percentile swap latency, ms.
    pub(crate) swap_p99_ms: f64,
    /// Slowest swap, ms.
    pub(crate) swap_max_ms: f64,
    /// The load in the windows with no swaps.
    pub(crate) steady: Report,
    /// The same load in the windows with back-to-back swaps.
    pub(crate) storm: Report,
    /// Swaps completed during the storm.
    pub(crate) storm_swaps: u64,
    /// Calls per second in each steady window, in order.
    pub(crate) steady_windows: Vec<f64>,
    /// Calls per second in each storm window, in order.
    pub(crate) storm_windows: Vec<f64>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "swap latency over {} swaps: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (write to first reply from the new build, debounce included)",
            self.swaps, self.swap_p50_ms, self.swap_p99_ms, self.swap_max_ms
        )?;
        writeln!(
            f,
            "steady: {:.0} calls/s  p99 {} µs  errors {}",
            self.steady.rate, self.steady.p99_us, self.steady.errors
        )?;
        writeln!(
            f,
            "storm:  {:.0} calls/s  p99 {} µs  errors {}  ({} swaps)",
            self.storm.rate, self.storm.p99_us, self.storm.errors, self.storm_swaps
        )?;
        let rates = |windows: &[f64]| {
            windows
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(f, "steady windows: {}", rates(&self.steady_windows))?;
        writeln!(f, "storm windows:  {}", rates(&self.storm_windows))
    }
}

/// Runs the scenario against `target`.
pub(crate) async fn run(
    target: &Target,
    scenario: &ReloadScenario,
) -> anyhow::Result<ReloadReport> {
    let mut swapper = Swapper::start(target, scenario).await?;
    let mut latencies_us = Vec::with_capacity(scenario.swaps);
    for n in 0..scenario.swaps {
        latencies_us.push(swapper.swap().await?.as_micros() as u64);
        eprint!("\rreload: {} of {} swaps", n + 1, scenario.swaps);
    }
    eprintln!();
    latencies_us.sort_unstable();
    let quantile = |q: f64| {
        let i = ((latencies_us.len() as f64 - 1.0) * q).round() as usize;
        latencies_us.get(i).copied().unwrap_or_default() as f64 / 1000.0
    };
    let load = StormLoad {
        conns: scenario.conns,
        inflight: scenario.inflight,
        method: scenario.method.clone(),
        pairs: scenario.windows.max(1),
        window: scenario.duration / scenario.windows.max(1) as u32,
    };
    // In the storm the swapper learns of each swap from the server's
    // `actions.changed` push (then checks it with one call) instead of
    // calling until the new build answers: those calls would be load of
    // their own beside the load measured. It gets a thread of its own: its
    // file copies must not stall the load generator's event loop, or the
    // storm would measure the generator.
    swapper.subscribe().await?;
    let (requests, storms) = std::sync::mpsc::channel::<StormRequest>();
    let swapper_thread = std::thread::Builder::new()
        .name("bench-swapper".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                for (until, answer) in storms {
                    let mut swaps = 0;
                    let result = loop {
                        if Instant::now() >= until {
                            break Ok(swaps);
                        }
                        if let Err(e) = swapper.swap().await {
                            break Err(e);
                        }
                        swaps += 1;
                    };
                    let failed = result.is_err();
                    let _ = answer.send(result);
                    if failed {
                        break;
                    }
                }
            });
            anyhow::Ok(())
        })?;
    let storm = storm::run(target, &load, requests).await;
    // Waited for off this runtime, which must keep driving the I/O of the
    // swapper's socket (it was opened here) until the swapper is done.
    tokio::task::spawn_blocking(move || swapper_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the swapper thread panicked"))??;
    let storm = storm?;
    Ok(ReloadReport {
        swaps: scenario.swaps,
        swap_p50_ms: quantile(0.5),
        swap_p99_ms: quantile(0.99),
        swap_max_ms: latencies_us.last().copied().unwrap_or_default() as f64 / 1000.0,
        steady: storm.steady,
        storm: storm.storm,
        storm_swaps: storm.swaps,
        steady_windows: storm.steady_windows,
        storm_windows: storm.storm_windows,
    })
}

/// Swaps the two builds in turn and times each swap.
/// The swapper's control connection is the library's Rust client: it
/// follows `actions.changed` pushes and calls the method, off the
/// measured load.
struct Swapper {
    client: Client,
    events: broadcast::Receiver<ClientEvent>,
    scenario: ReloadScenario,
    /// `results[i]`: what `method` answers when build `i` serves.
    results: [String; 2],
    /// The build serving now.
    serving: usize,
    /// Subscribed to `actions.changed`: each swap waits for the push.
    announced: bool,
    /// Builds installed so far (each gets a trailer of its own).
    installed: u64,
}

impl Swapper {
    /// Installs build 0, then build 1, learning what each answers.
    async fn start(target: &Target, scenario: &ReloadScenario) -> anyhow::Result<Swapper> {
        let options = match target.token_for(0)? {
            Some(token) => ClientOptions::with_token(token),
            None => ClientOptions::default(),
        };
        let client = Client::connect(&target.url, options).await?;
        let mut swapper = Swapper {
            events: client.events(),
            client,
            scenario: scenario.clone(),
            results: [String::new(), String::new()],
            serving: 0,
            announced: false,
            installed: 0,
        };
        let before = swapper.call().await?;
        swapper.install(0)?;
        // If build 0 was already in place nothing changes: give it the
        // server's longest plausible debounce before taking the answer.
        swapper.results[0] = swapper
            .wait_for(|r| r != before, Duration::from_secs(3))
            .await?
            .unwrap_or(before);
        swapper.install(1)?;
        let first = swapper.results[0].clone();
        swapper.results[1] = swapper
            .wait_for(|r| r != first, SWAP_DEADLINE)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the second build never answered {} differently from the first; pick a method whose \
                     result differs between the builds (e.g. an action that reports the version)",
                    scenario.method
                )
            })?;
        swapper.serving = 1;
        Ok(swapper)
    }

    /// Installs the other build; returns the time from its rename to the
    /// first reply from it.
    async fn swap(&mut self) -> anyhow::Result<Duration> {
        let next = 1 - self.serving;
        self.install(next)?;
        let written = Instant::now();
        let wanted = self.results[next].clone();
        let swapped = if self.announced {
            self.wait_announced(&wanted, SWAP_DEADLINE).await?
        } else {
            self.wait_for(|r| r == wanted, SWAP_DEADLINE).await?
        };
        swapped.ok_or_else(|| anyhow::anyhow!("a swap did not happen within {SWAP_DEADLINE:?}"))?;
        self.serving = next;
        Ok(written.elapsed())
    }

    /// Installs build `which` as a content never installed before.
    fn install(&mut self, which: usize) -> anyhow::Result<()> {
        self.installed += 1;
        install(
            &self.scenario.builds[which],
            &self.scenario.target,
            self.installed,
        )
    }

    /// Subscribes to the server's `actions.changed` pushes, which later
    /// swaps wait for instead of calling until the new build answers.
    async fn subscribe(&mut self) -> anyhow::Result<()> {
        let reply = self
            .request("rpc.subscribe", r#"{"event":"actions.changed"}"#)
            .await?;
        if !reply.contains("\"subscribed\":true") {
            anyhow::bail!("the server refused rpc.subscribe actions.changed: {reply}");
        }
        self.announced = true;
        Ok(())
    }

    /// Waits for `actions.changed` pushes until, after one, the method
    /// answers `wanted` (`None` if `within` passes first).
    async fn wait_announced(
        &mut self,
        wanted: &str,
        within: Duration,
    ) -> anyhow::Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    anyhow::bail!("the client closed")
                }
                // Missed pushes: check the method anyway.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => None,
                Ok(Ok(event)) => Some(event),
            };
            let announced = match event {
                None => true,
                Some(ClientEvent::Event { event, .. }) => event == "actions.changed",
                Some(_) => false,
            };
            if announced {
                let result = self.call().await?;
                if result == wanted {
                    return Ok(Some(result));
                }
            }
        }
    }

    /// Calls until the result satisfies `done` (returning it) or `within`
    /// passes (`None`).
    async fn wait_for(
        &mut self,
        done: impl Fn(&str) -> bool,
        within: Duration,
    ) -> anyhow::Result<Option<String>> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let result = self.call().await?;
            if done(&result) {
                return Ok(Some(result));
            }
        }
        Ok(None)
    }

    /// One call of the method; its result (or error) as JSON text.
    async fn call(&mut self) -> anyhow::Result<String> {
        let method = self.scenario.method.clone();
        self.request(&method, "{}").await
    }

    /// One call of `method` with `params` (JSON text); its result (or
    /// error) as JSON text.
    async fn request(&mut self, method: &str, params: &str) -> anyhow::Result<String> {
        let params: serde_json::Value = serde_json::from_str(params)?;
        match self.client.call(method, params).await {
            Ok(result) => Ok(result.to_string()),
            Err(CallError::Rpc {
                code,
                message,
                data,
            }) => {
                Ok(serde_json::json!({"code": code, "message": message, "data": data}).to_string())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes `build` beside `target` under a name the server ignores, with
/// `trailer` appended, then renames it into place: one complete file, one
/// event. The trailer (past the end of everything the ELF headers
/// describe, so the loader ignores it) makes each write a content the
/// server has never seen: every swap is a full reload, preflight included,
/// as after a real rebuild.
pub(crate) fn install(build: &Path, target: &Path, trailer: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let staged = target.with_extension("staged");
    std::fs::copy(build, &staged)
        .map_err(|e| anyhow::anyhow!("copying {} to {}: {e}", build.display(), staged.display()))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&staged)
        .and_then(|mut file| file.write_all(&trailer.to_le_bytes()))
        .map_err(|e| anyhow::anyhow!("appending to {}: {e}", staged.display()))?;
    std::fs::rename(&staged, target)
        .map_err(|e| anyhow::anyhow!("renaming into {}: {e}", target.display()))?;
    Ok(())
}
