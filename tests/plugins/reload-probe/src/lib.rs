//! The hot-reload tests' plugin. Its variants are chosen when it is built,
//! by environment variables (cargo rebuilds it when they change):
//!
//! - `PROBE_VERSION` (default `v1`): what `probe/version` reports.
//! - `PROBE_CTOR=segv|hang`: a library constructor that crashes or hangs
//!   (it runs on `dlopen`, before any check).
//! - `PROBE_INIT=panic`: the plugin function panics (the entry fails);
//!   `PROBE_INIT=print`: it prints to stdout (as plugins in development do).
//! - `PROBE_RESTORE=refuse`: its restore hook refuses a predecessor's state.
//!
//! Actions (all public):
//! - `probe/version`: `{"version", "instance", "self_version"}`: `instance`
//!   is made up when this copy is loaded, so every generation has its own;
//!   `self_version` comes through this library's own exported function.
//! - `probe/build`: just the version string (what tells two builds apart
//!   for `switchboard bench reload`).
//! - `probe/sleep {ms}`: sleeps, then answers like `probe/version`.
//! - `probe/count`: adds one to a counter handed over across reloads.
//! - `probe/log`: logs a line through the host.
//! - `probe/tls` (inline, so on the server's worker threads): touches a
//!   `thread_local!` value with `Drop`, which pins this image in memory.
//! - `probe/listen`: binds a TCP listener on 127.0.0.1 served by a thread
//!   of the plugin's own, and answers its port; the shutdown hook (run
//!   when this generation retires) stops the thread and frees the port.

use action_api::{Action, ActionError, Context, Plugin, export_plugin};
use serde::Deserialize;
use serde::Serialize;
use std::ffi::{CStr, CString, c_char};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

const VERSION: &str = match option_env!("PROBE_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => "v1",
};

static VERSION_C: LazyLock<CString> = LazyLock::new(|| CString::new(VERSION).unwrap_or_default());

/// Set when this copy's plugin function runs: unique per generation.
static INSTANCE: OnceLock<u64> = OnceLock::new();

static COUNT: AtomicU64 = AtomicU64::new(0);

/// Exported and called through the dynamic symbol table: if an older
/// generation's symbols were interposed (RTLD_GLOBAL), this would answer
/// the older version.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn reload_probe_self_version() -> *const c_char {
    VERSION_C.as_ptr()
}

#[derive(Serialize)]
struct Identity {
    version: &'static str,
    instance: u64,
    self_version: String,
}

fn identity() -> Identity {
    // SAFETY: a pointer to a NUL-terminated string in a static.
    let self_version = unsafe { CStr::from_ptr(reload_probe_self_version()) }
        .to_string_lossy()
        .into_owned();
    Identity {
        version: VERSION,
        instance: INSTANCE.get().copied().unwrap_or_default(),
        self_version,
    }
}

fn version(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<Identity, ActionError> {
    Ok(identity())
}

fn build(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<&'static str, ActionError> {
    Ok(VERSION)
}

#[derive(Deserialize)]
struct SleepParams {
    ms: u64,
}

fn sleep(_ctx: &Context<'_>, p: SleepParams) -> Result<Identity, ActionError> {
    std::thread::sleep(Duration::from_millis(p.ms.min(60_000)));
    Ok(identity())
}

#[derive(Serialize)]
struct Count {
    count: u64,
    version: &'static str,
}

fn count(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<Count, ActionError> {
    Ok(Count {
        count: COUNT.fetch_add(1, Ordering::SeqCst) + 1,
        version: VERSION,
    })
}

fn log(ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<&'static str, ActionError> {
    ctx.logger()
        .info(format!("probe says hello from {VERSION}"));
    Ok(VERSION)
}

/// Its destructor is what glibc must run when the thread exits, so a
/// touched value pins this image while the thread lives.
struct Pinning(u64);

static DROPPED: AtomicU64 = AtomicU64::new(0);

impl Drop for Pinning {
    fn drop(&mut self) {
        DROPPED.fetch_add(self.0, Ordering::Relaxed);
    }
}

thread_local! {
    static PINNING: std::cell::RefCell<Option<Pinning>> = const { std::cell::RefCell::new(None) };
}

fn tls(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<&'static str, ActionError> {
    PINNING.with(|p| *p.borrow_mut() = Some(Pinning(1)));
    Ok(VERSION)
}

/// The listener thread `probe/listen` started, and how to stop it.
static LISTENER: std::sync::Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>> =
    std::sync::Mutex::new(None);

fn listen(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<u16, ActionError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ActionError::internal(format!("bind: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ActionError::internal(format!("nonblocking: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| ActionError::internal(format!("local_addr: {e}")))?
        .port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            // Accept and drop whatever connects; poll for the stop flag.
            let _ = listener.accept();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    if let Ok(mut slot) = LISTENER.lock() {
        *slot = Some((stop, thread));
    }
    Ok(port)
}

fn shutdown() {
    let taken = LISTENER.lock().ok().and_then(|mut slot| slot.take());
    if let Some((stop, thread)) = taken {
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
}

/// State format: one version byte (1), then the count, little-endian.
fn save() -> Vec<u8> {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&COUNT.load(Ordering::SeqCst).to_le_bytes());
    bytes
}

fn restore(bytes: &[u8]) -> Result<(), String> {
    if option_env!("PROBE_RESTORE") == Some("refuse") {
        return Err("this build refuses handed-over state (PROBE_RESTORE=refuse)".into());
    }
    match bytes {
        [1, count @ ..] => {
            let count: [u8; 8] = count
                .try_into()
                .map_err(|_| format!("state of {} bytes, expected 9", bytes.len()))?;
            COUNT.store(u64::from_le_bytes(count), Ordering::SeqCst);
            Ok(())
        }
        _ => Err("unknown state format".into()),
    }
}

extern "C" fn constructor() {
    match option_env!("PROBE_CTOR") {
        Some("segv") => {
            // SAFETY: deliberately not: this variant proves a crashing
            // constructor cannot take the server down.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) }
        }
        Some("hang") => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        _ => {}
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

fn plugin() -> Plugin {
    match option_env!("PROBE_INIT") {
        Some("panic") => panic!("this build's plugin function panics (PROBE_INIT=panic)"),
        Some("print") => println!("{{\"ok\": false, \"note\": \"a plugin printing to stdout\"}}"),
        _ => {}
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let _ = INSTANCE.set(nanos ^ (&COUNT as *const AtomicU64 as u64));
    Plugin::new("reload-probe", VERSION)
        .action(Action::new("probe/version", version).public())
        .action(Action::new("probe/build", build).public())
        .action(Action::new("probe/build-inline", build).public().inline())
        .action(
            Action::new("probe/sleep", sleep)
                .public()
                .timeout(Duration::from_secs(60)),
        )
        .action(Action::new("probe/count", count).public())
        .action(Action::new("probe/log", log).public())
        .action(Action::new("probe/tls", tls).public().inline())
        .action(Action::new("probe/listen", listen).public())
        .keep_state(save, restore)
        .on_shutdown(shutdown)
}

export_plugin!(plugin);
