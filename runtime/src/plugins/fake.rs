//! A fake [`Loader`] for unit tests: "plugin files" are one line of text
//! describing the plugin, and opening one builds its descriptor in this
//! process, so the reload table, the registry and dispatch run their real
//! code without native libraries.
//!
//! A file reads like `name=alpha version=1 actions=a/x,a/y code=1`:
//! - `name`, `version`: the plugin's;
//! - `actions`: its paths, comma-separated (suffix `!` marks one public,
//!   `~` after that one inline, `@250` gives it a 250 ms deadline);
//! - `code`: which of a few distinct call functions it uses (two live
//!   generations with the same `code` look like one image, as a loader
//!   handing an old library back would);
//! - `keeps=1`: it saves its state (the 5 bytes `saved`); `takes=ok` or
//!   `takes=fail`: it restores a predecessor's state, or refuses it;
//! - a file starting with `junk` is not a library.
//!
//! Actions answer by their index: 0 echoes the params; 1 refuses with
//! code 1000; 2 panics (status `PANICKED`); 3 returns text that is not
//! JSON; 4 never answers; 5 returns its `code`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::elf::ElfError;
use super::loader::{LoadError, Loader, OpenImage, Opened};
use super::replies::complete_call;
use super::shadow::Copied;
use action_api::abi::{
    ABI_VERSION, ActionDescriptor, ByteView, CallInfo, HostTable, PluginDescriptor, StateSink,
    action_flags, state_status, status,
};
use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The fake loader; `closed` lists `name version` of every image closed.
#[derive(Debug, Default, Clone)]
pub(crate) struct FakeLoader {
    /// Images closed, in order, as `name version`.
    pub(crate) closed: Arc<Mutex<Vec<String>>>,
}

impl FakeLoader {
    /// What was closed so far.
    pub(crate) fn closed(&self) -> Vec<String> {
        self.closed.lock().unwrap().clone()
    }
}

struct FakeImage {
    label: String,
    closed: Arc<Mutex<Vec<String>>>,
}

impl OpenImage for FakeImage {
    fn close(self: Box<Self>) -> Result<(), String> {
        self.closed.lock().unwrap().push(self.label);
        Ok(())
    }
}

fn leak(text: &str) -> ByteView {
    ByteView::of(Box::leak(text.to_owned().into_boxed_str()).as_bytes())
}

impl Loader for FakeLoader {
    fn check(&self, copy: &Copied) -> Result<(), ElfError> {
        let text = std::fs::read_to_string(copy.path()).unwrap_or_default();
        if text.starts_with("junk") {
            return Err(ElfError::NotElf);
        }
        Ok(())
    }

    fn open(&self, copy: &Path, _host: &'static HostTable) -> Result<Opened, LoadError> {
        let text = std::fs::read_to_string(copy).map_err(LoadError::Copy)?;
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("")
                .to_owned()
        };
        let (name, version) = (field("name"), field("version"));
        let actions: Vec<ActionDescriptor> = field("actions")
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|spec| {
                let (spec, timeout_ms) = match spec.split_once('@') {
                    Some((path, ms)) => (path, ms.parse().unwrap()),
                    None => (spec, 0),
                };
                let (spec, inline) = match spec.strip_suffix('~') {
                    Some(spec) => (spec, action_flags::INLINE),
                    None => (spec, 0),
                };
                let (path, flags) = match spec.strip_suffix('!') {
                    Some(path) => (path, action_flags::PUBLIC | inline),
                    None => (spec, inline),
                };
                ActionDescriptor {
                    path: leak(path),
                    flags,
                    timeout_ms,
                    scopes: ByteView::ABSENT,
                    rate_per_sec: 0,
                    rate_burst: 0,
                }
            })
            .collect();
        let actions: &'static [ActionDescriptor] = Box::leak(actions.into_boxed_slice());
        let call = match field("code").as_str() {
            "2" => fake_call::<2> as unsafe extern "C" fn(usize, *const CallInfo),
            "3" => fake_call::<3>,
            "4" => fake_call::<4>,
            _ => fake_call::<1>,
        };
        let descriptor = Box::leak(Box::new(PluginDescriptor {
            abi_version: ABI_VERSION,
            size: std::mem::size_of::<PluginDescriptor>() as u32,
            name: leak(&name),
            version: leak(&version),
            actions: actions.as_ptr(),
            action_count: actions.len(),
            action_size: std::mem::size_of::<ActionDescriptor>(),
            call,
            shutdown: None,
            authenticate: None,
            on_event: None,
            event_mask: 0,
            room_join: None,
            room_patterns: ByteView::ABSENT,
            save_state: (field("keeps") == "1")
                .then_some(save_state as unsafe extern "C" fn(*mut c_void, StateSink) -> u32),
            restore_state: match field("takes").as_str() {
                "ok" => Some(restore_ok),
                "fail" => Some(restore_fail),
                _ => None,
            },
        }));
        Ok(Opened {
            image: Box::new(FakeImage {
                label: format!("{name} {version}"),
                closed: Arc::clone(&self.closed),
            }),
            descriptor,
        })
    }
}

unsafe extern "C" fn fake_call<const CODE: usize>(action: usize, call: *const CallInfo) {
    // SAFETY: the host passes a valid call for the duration of this call.
    let call = unsafe { &*call };
    // SAFETY: the params view is valid for this call.
    let params = unsafe { call.params.as_slice() };
    let answer = |status: u32, body: &[u8]| {
        // SAFETY: the reply handle is completed once.
        unsafe { complete_call(call.reply, status, ByteView::of(body)) }
    };
    match action {
        0 => answer(status::OK, params),
        1 => answer(status::ACTION_ERROR, br#"{"code":1000,"message":"no"}"#),
        2 => answer(status::PANICKED, b"boom"),
        3 => answer(status::OK, b"not json"),
        // Never answers: the handle is dropped by nobody (a hung plugin).
        4 => {}
        _ => answer(status::OK, CODE.to_string().as_bytes()),
    }
}

unsafe extern "C" fn save_state(sink_ctx: *mut c_void, sink: StateSink) -> u32 {
    // SAFETY: the host's sink copies the bytes before it returns.
    unsafe { sink(sink_ctx, ByteView::of(b"saved")) };
    state_status::OK
}

unsafe extern "C" fn restore_ok(_state: ByteView, _ctx: *mut c_void, _sink: StateSink) -> u32 {
    state_status::OK
}

unsafe extern "C" fn restore_fail(_state: ByteView, ctx: *mut c_void, sink: StateSink) -> u32 {
    // SAFETY: as in `save_state`.
    unsafe { sink(ctx, ByteView::of(b"the state is from another world")) };
    state_status::FAILED
}
