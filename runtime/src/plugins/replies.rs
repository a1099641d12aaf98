//! How a plugin answers: the reply handles it completes calls and hooks
//! with, and the pins that keep its generation mapped while it may still
//! run.
//!
//! - A handle is a generation-checked key in a host-side table
//!   (`sharded_slab`), or for an inline call a slot and sequence number
//!   (`inline_reply`), never a pointer the plugin could free twice: a
//!   second completion, or one with a made-up handle, finds nothing and is
//!   refused with a log line.
//! - The generation a call runs on is pinned until the plugin completes it
//!   (a deferred answer may come much later, from a thread of the
//!   plugin's). The completion does not let the library be unmapped while
//!   the plugin's frames are still on the completing thread's stack: on a
//!   thread the host called into the plugin with, the pin is dropped when
//!   that call returns; on a thread of the plugin's own, the generation
//!   may drain and close (its shutdown hook usually stops that thread),
//!   but the thread holds a loader reference to the image (`RTLD_NOLOAD`,
//!   as glibc's own thread-local destructors do) until it exits, so the
//!   image is unmapped only after the thread has left it.

use super::inbox::{CallKey, Inbox};
use super::inline_reply;
use action_api::abi::ByteView;
use sharded_slab::Slab;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use tokio::sync::oneshot;

/// How a plugin ended one call: an [`action_api::abi::status`] code and its
/// body, copied into host memory.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) status: u32,
    pub(crate) body: Vec<u8>,
    /// Completed through `complete_serialized`: the plugin's serializer
    /// wrote the body.
    pub(crate) serialized: bool,
}

/// A generation as a reply's pin sees it: code that must stay mapped,
/// loaded from `image` (its private copy).
pub(crate) trait Pinned: Send + Sync + std::fmt::Debug {
    /// The file its image was loaded from.
    fn image(&self) -> &Path;
}

/// Where one call's completion goes, and the generation it pins.
#[derive(Debug)]
pub(crate) struct PendingReply {
    /// Taken when the completion is delivered; a reply dropped with it
    /// still here was never completed (see the `Drop` impl).
    to: Option<ReplyTo>,
    generation: Option<Arc<dyn Pinned>>,
    /// Bytes a success's body is preceded by (ASCII spaces), for the
    /// caller to write its reply's head over (see [`PendingReply::leaving_room`]).
    room: usize,
}

/// The handle table's shape: sharded_slab's defaults, with the keys' two
/// top bits kept clear, so that a table handle (a key plus one) never has
/// the top bit every slot handle has ([`inline_reply::SLOT_HANDLE`]).
struct TableShape;

impl sharded_slab::Config for TableShape {
    const RESERVED_BITS: usize = 2;
}

/// Every reply handle a plugin holds now, except those of inline calls in
/// their thread's slot ([`super::inline_reply`]).
static HANDLES: LazyLock<Slab<PendingReply, TableShape>> =
    LazyLock::new(Slab::new_with_config::<TableShape>);

/// Whoever waits for a completion.
#[derive(Debug)]
enum ReplyTo {
    /// A caller awaiting this one call.
    Channel(oneshot::Sender<Completion>),
    /// A connection's inbox, where its pool calls end.
    Inbox(std::sync::Arc<Inbox>, CallKey),
}

impl ReplyTo {
    /// Hands over the completion (`None`: there will be none). A caller
    /// gone (deadline passed, connection closed) drops it.
    fn send(self, done: Option<Completion>) {
        match self {
            ReplyTo::Channel(tx) => {
                // A dropped sender tells the receiver there is no answer.
                if let Some(done) = done {
                    let _ = tx.send(done);
                }
            }
            ReplyTo::Inbox(inbox, key) => inbox.push((key, done)),
        }
    }
}

impl Drop for PendingReply {
    /// A reply dropped uncompleted (the question never reached the
    /// plugin, or the plugin let go of its handle) tells its caller so.
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            to.send(None);
        }
    }
}

impl PendingReply {
    /// A pending reply and the receiver its completion arrives on.
    pub(crate) fn new() -> (PendingReply, oneshot::Receiver<Completion>) {
        let (tx, rx) = oneshot::channel();
        (PendingReply::to(ReplyTo::Channel(tx)), rx)
    }

    /// A pending reply whose completion goes to `inbox` as call `key`.
    pub(crate) fn into_inbox(inbox: std::sync::Arc<Inbox>, key: CallKey) -> PendingReply {
        PendingReply::to(ReplyTo::Inbox(inbox, key))
    }

    fn to(to: ReplyTo) -> PendingReply {
        PendingReply {
            to: Some(to),
            generation: None,
            room: 0,
        }
    }

    /// Keeps `generation` from being closed until the plugin completes
    /// this reply, and has left the code that completed it.
    pub(crate) fn holding(mut self, generation: Arc<dyn Pinned>) -> Self {
        self.generation = Some(generation);
        self
    }

    /// Has a success's body copied in after `bytes` ASCII spaces (JSON
    /// whitespace, so the body stays the same JSON), with one byte to
    /// spare at the end: room for the reply's envelope, written over the
    /// spaces in place (`protocol::reply_ok_around`), so the reply is
    /// made in this one buffer, filled exactly.
    pub(crate) fn leaving_room(mut self, bytes: usize) -> Self {
        self.room = bytes;
        self
    }

    /// Turns the reply into the opaque handle passed to the plugin, which
    /// it completes once with [`complete_call`]. Null (which a plugin must
    /// treat as "no reply expected") only if the table is full, when the
    /// reply is dropped and the caller hears nothing.
    pub(crate) fn into_handle(self) -> *mut c_void {
        match HANDLES.insert(self) {
            // Offset by one: a key of 0 must not read as a null handle.
            Some(key) => (key + 1) as *mut c_void,
            None => {
                tracing::error!("the reply-handle table is full; a call gets no answer");
                std::ptr::null_mut()
            }
        }
    }
}

/// The host's `complete` callback: hands a plugin's answer to whoever
/// waits for it. A handle completed before, or never handed out, is
/// refused with a log line.
pub(crate) unsafe extern "C" fn complete_call(reply: *mut c_void, status: u32, body: ByteView) {
    // SAFETY: this function's contract is `finish`'s.
    unsafe { finish(reply, status, body, false) }
}

/// The host's `complete_serialized` callback: a success whose body the
/// plugin's serializer wrote (well-formed JSON: not parsed again).
pub(crate) unsafe extern "C" fn complete_serialized(reply: *mut c_void, body: ByteView) {
    // SAFETY: this function's contract is `finish`'s.
    unsafe { finish(reply, action_api::abi::status::OK, body, true) }
}

/// Hands an answer to whoever waits for it (see [`complete_call`]).
///
/// # Safety
/// `body` views bytes that stay readable until this returns.
unsafe fn finish(reply: *mut c_void, status: u32, body: ByteView, serialized: bool) {
    if reply.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the plugin passes bytes that live for this call; they
        // are copied before it returns.
        let body = unsafe { body.as_slice() };
        let handle = reply as usize;
        if handle & inline_reply::SLOT_HANDLE != 0 {
            inline_reply::complete(handle, status, body, serialized);
            return;
        }
        match HANDLES.take(handle - 1) {
            Some(pending) => deliver(pending, status, body, serialized),
            None => refuse_unknown_handle(),
        }
    }));
}

/// Logs a completion whose handle names no call waiting for one.
pub(super) fn refuse_unknown_handle() {
    tracing::error!(
        target: "plugin",
        "a plugin completed a call twice, or with a handle it was never given; ignored"
    );
}

/// A body as its caller gets it: a success after the room it asked for
/// (see [`PendingReply::leaving_room`]), anything else as it is.
pub(super) fn body_after_room(status: u32, body: &[u8], room: usize) -> Vec<u8> {
    if status == action_api::abi::status::OK && room > 0 {
        let mut copy = Vec::with_capacity(room + body.len() + 1);
        copy.resize(room, b' ');
        copy.extend_from_slice(body);
        copy
    } else {
        body.to_vec()
    }
}

/// Hands an answer to whoever waits for `pending`, and lets its pin go.
pub(super) fn deliver(mut pending: PendingReply, status: u32, body: &[u8], serialized: bool) {
    let body = body_after_room(status, body, pending.room);
    let pin = pending.generation.take();
    if let Some(to) = pending.to.take() {
        to.send(Some(Completion {
            status,
            body,
            serialized,
        }));
    }
    if let Some(pin) = pin {
        park(pin);
    }
}

thread_local! {
    /// How deep this thread is in host-to-plugin calls.
    static IN_PLUGIN: Cell<u32> = const { Cell::new(0) };
    /// Pins released during those calls, dropped when the outermost ends.
    static DEFERRED: RefCell<Vec<Arc<dyn Pinned>>> = const { RefCell::new(Vec::new()) };
    /// Loader references to the images of generations whose calls this
    /// thread (one of a plugin's own) completed, one per image, closed
    /// when the thread exits (its frames are all gone then).
    static THREAD_PINS: RefCell<Vec<ImagePin>> = const { RefCell::new(Vec::new()) };
}

/// A loader reference to one mapped image, by the path it was loaded from.
#[derive(Debug)]
struct ImagePin {
    image: std::path::PathBuf,
    _held: ImageHold,
}

/// What keeps the image mapped: a loader reference, or (if the loader
/// could not give one) the generation itself.
#[derive(Debug)]
enum ImageHold {
    /// Held for its `Drop` (a `dlclose`), never read.
    Loader(#[allow(dead_code)] libloading::os::unix::Library),
    /// Held for its `Drop`, never read.
    Generation(#[allow(dead_code)] Arc<dyn Pinned>),
}

/// Keeps a released pin until no plugin frame of this thread can need it.
pub(super) fn park(pin: Arc<dyn Pinned>) {
    if IN_PLUGIN.with(Cell::get) > 0 {
        DEFERRED.with(|deferred| deferred.borrow_mut().push(pin));
        return;
    }
    let _ = THREAD_PINS.try_with(|pins| {
        let mut pins = pins.borrow_mut();
        if pins.iter().any(|held| held.image == pin.image()) {
            return;
        }
        let held = match super::images::hold_image(pin.image()) {
            Some(library) => ImageHold::Loader(library),
            None => ImageHold::Generation(Arc::clone(&pin)),
        };
        pins.push(ImagePin {
            image: pin.image().to_path_buf(),
            _held: held,
        });
    });
    // The generation itself may go now: draining and its shutdown hook do
    // not wait for this thread, only the unmapping does.
    drop(pin);
}

/// Marks this thread as inside a call into a plugin until dropped; then
/// the pins its completions released are dropped, outside the plugin.
#[derive(Debug)]
pub(crate) struct InPlugin(());

impl InPlugin {
    /// Enters a call into plugin code.
    pub(crate) fn enter() -> InPlugin {
        IN_PLUGIN.with(|depth| depth.set(depth.get() + 1));
        InPlugin(())
    }
}

impl Drop for InPlugin {
    fn drop(&mut self) {
        let depth = IN_PLUGIN.with(|depth| {
            let left = depth.get().saturating_sub(1);
            depth.set(left);
            left
        });
        if depth == 0 {
            // One at a time, each dropped outside the borrow (a last pin's
            // drop may close its generation, whose shutdown hook may
            // complete replies here), and the list keeps its capacity: no
            // allocation per call.
            while let Some(pin) = DEFERRED.with(|deferred| deferred.borrow_mut().pop()) {
                drop(pin);
            }
        }
    }
}
