//! The hot-reload tests' plugin. Its variants are chosen when it is built,
//! by environment variables (cargo rebuilds it when they change):
//!
//! - `PROBE_VERSION` (default `v1`): what `probe/version` reports.
//! - `PROBE_CTOR=segv|hang|busy`: a library constructor that crashes,
//!   hangs, or computes for 10-200 ms (it runs on `dlopen`,
//!   before any check).
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
//! - `probe/build-inline`: the same, marked inline (so it runs on the
//!   server's worker threads).
//! - `probe/sleep {ms}`: sleeps, then answers like `probe/version`.
//! - `probe/count`: adds one to a counter handed over across reloads.
//! - `probe/log`: logs a line through the host.
//! - `probe/fail`: always refuses, with code 4100 and a message (the error
//!   path across the boundary).
//! - `probe/later {ms?}`: a deferred action: a thread of the plugin's own
//!   answers `"later from <version>"` about a millisecond (or `ms`) later,
//!   one call after another. That
//!   thread is started when the plugin is loaded, not by the action (see
//!   `LATER`), so answering later does not keep this image mapped after it
//!   retires; the shutdown hook stops it.
//! - `probe/later-inline`: the same, marked inline: the call is put to the
//!   plugin on the server's worker thread, which returns before the
//!   answer comes (the host moves the call's reply out of that thread's
//!   slot).
//! - `probe/live`: `{"allocations", "bytes"}` live in this copy's heap (see
//!   below), read at the start of the call, before it allocates its result,
//!   once the `probe/later` thread has finished every answer it was given.
//! - `probe/tls` (inline, so on the server's worker threads): touches a
//!   `thread_local!` value with `Drop`, which pins this image in memory.
//! - `probe/listen`: binds a TCP listener on 127.0.0.1 served by a thread
//!   of the plugin's own, and answers its port; the shutdown hook (run
//!   when this generation retires) stops the thread and frees the port.
//!   (Started by an action, on a server thread, so like `probe/tls` it
//!   keeps this image mapped after it retires: see `LATER`.)
//!
//! Every allocation this copy makes goes through a counting global
//! allocator (over the system allocator): allocations live and bytes live,
//! a realloc being neither an allocation nor a free. So a buffer the
//! plugin made and the host freed (or kept) shows as a live allocation
//! that never goes, and one the plugin freed but did not make shows as a
//! missing one. The shutdown hook (run when this generation retires, or
//! when the server stops) logs through the host `live allocations at
//! shutdown: N (B bytes) with the probe/later thread idle, M (C bytes)
//! once this copy's threads stopped`: N is read as `probe/live` reads, so
//! it equals `probe/live` whenever nothing leaked; M is what is left once
//! every thread the plugin started has exited: its statics only.

use action_api::{Action, ActionError, Context, Logger, Plugin, Reply, export_plugin};
use serde::Deserialize;
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CStr, CString, c_char};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, LazyLock, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// Allocations made by this copy and not yet freed.
static LIVE_ALLOCATIONS: AtomicI64 = AtomicI64::new(0);
/// Bytes of those allocations.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// The system allocator, counting what is live. Signed counters: a free
/// of memory this copy did not allocate drives them down, even below zero.
struct Counting;

fn bytes(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only atomics (no allocation, no panic).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(bytes(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(bytes(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(bytes(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded under the caller's contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        // Neither an allocation nor a free: one block, resized.
        if !new.is_null() {
            LIVE_BYTES.fetch_add(bytes(new_size) - bytes(layout.size()), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `probe/live` answers and the shutdown hook logs.
#[derive(Serialize, Clone, Copy)]
struct Live {
    allocations: i64,
    bytes: i64,
}

fn live_now() -> Live {
    Live {
        allocations: LIVE_ALLOCATIONS.load(Ordering::SeqCst),
        bytes: LIVE_BYTES.load(Ordering::SeqCst),
    }
}

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

fn fail(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<(), ActionError> {
    Err(ActionError::new(
        4100,
        format!("probe/fail always fails (this is {VERSION})"),
    ))
}

/// What the thread behind `probe/later` is asked to do.
enum Job {
    /// Answer this call once `due` has passed.
    Answer { reply: Reply, due: Instant },
    /// Meet at [`SYNCED`]: every job sent before is then done, and all it
    /// allocated freed.
    Sync,
}

/// The thread that answers `probe/later`, and how to hand it work. It is
/// started by the plugin function, which the server runs on a thread that
/// exits right after: starting a thread registers a thread-local
/// destructor (std's spawn hooks) on the thread that starts it, and one
/// started from an action would register it on a server thread that
/// lives on, keeping this image mapped after it retires.
static LATER: Mutex<Option<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)>> = Mutex::new(None);

/// Where [`Job::Sync`] meets its sender (who holds [`LATER`] meanwhile,
/// so two never mix).
static SYNCED: Barrier = Barrier::new(2);

fn start_later_thread() {
    let (jobs, inbox) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("probe-later".into())
        .spawn(move || answer_later(inbox));
    if let Ok(thread) = thread {
        *LATER.lock().unwrap_or_else(PoisonError::into_inner) = Some((jobs, thread));
    }
}

fn answer_later(inbox: mpsc::Receiver<Job>) {
    // Ends once the sender is dropped (by the shutdown hook) and every
    // job sent before is done.
    for job in inbox {
        match job {
            Job::Answer { reply, due } => {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                reply.send(Ok(format!("later from {VERSION}")));
            }
            Job::Sync => {
                SYNCED.wait();
            }
        }
    }
}

/// `probe/later`'s params: how long to wait before answering (at least
/// the 1 ms default, at most a minute).
#[derive(Deserialize)]
struct LaterParams {
    #[serde(default)]
    ms: u64,
}

fn later(_ctx: &Context<'_>, params: LaterParams, reply: Reply) {
    let job = Job::Answer {
        reply,
        due: Instant::now() + Duration::from_millis(params.ms.clamp(1, 60_000)),
    };
    let refused = match LATER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        Some((jobs, _)) => jobs.send(job).err().map(|e| e.0),
        None => Some(job),
    };
    if let Some(Job::Answer { reply, .. }) = refused {
        reply.send::<()>(Err(ActionError::internal(
            "the probe/later thread is not running",
        )));
    }
}

/// Waits until the `probe/later` thread has done every job it was given
/// (and freed what they allocated); it then waits for the next job.
fn sync_later_thread() {
    let slot = LATER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((jobs, _)) = slot.as_ref()
        && jobs.send(Job::Sync).is_ok()
    {
        SYNCED.wait();
    }
}

/// Stops the `probe/later` thread (after the jobs it was given) and waits
/// for it to exit: it has then freed all it allocated (its handle, its
/// channel, its thread-locals).
fn stop_later_thread() {
    let taken = LATER.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((jobs, thread)) = taken {
        drop(jobs);
        let _ = thread.join();
    }
}

fn live(_ctx: &Context<'_>, _params: serde::de::IgnoredAny) -> Result<Live, ActionError> {
    sync_later_thread();
    Ok(live_now())
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
    // Read as `probe/live` reads: the `probe/later` thread idle.
    sync_later_thread();
    let idle = live_now();
    let taken = LISTENER.lock().ok().and_then(|mut slot| slot.take());
    if let Some((stop, thread)) = taken {
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
    stop_later_thread();
    // Read before the line is formatted (which allocates).
    let stopped = live_now();
    if let Some(logger) = Logger::global() {
        logger.info(format_args!(
            "live allocations at shutdown: {} ({} bytes) with the probe/later thread idle, \
             {} ({} bytes) once this copy's threads stopped",
            idle.allocations, idle.bytes, stopped.allocations, stopped.bytes
        ));
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
        Some("busy") => {
            // About 10 ms of CPU in a release build and 100-200 ms in a
            // debug one: far more than a check starved at nice 19 gets in
            // its 500 ms grace, little enough that the check run again at
            // normal priority, sharing its core with the busy loops, ends
            // within seconds.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for _ in 0..10_000_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x = std::hint::black_box(x);
            }
        }
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
    start_later_thread();
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
        .action(Action::new("probe/fail", fail).public())
        .action(Action::deferred("probe/later", later).public())
        .action(
            Action::deferred("probe/later-inline", later)
                .public()
                .inline(),
        )
        .action(Action::new("probe/live", live).public())
        .keep_state(save, restore)
        .on_shutdown(shutdown)
}

export_plugin!(plugin);
