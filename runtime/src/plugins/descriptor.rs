//! Reading a plugin's descriptor and action list into host memory: every
//! field the plugin's revision provides, whole, and nothing past it.
//!
//! A plugin built against an older `action-api` has a shorter descriptor
//! and shorter action entries; the missing fields read as absent. Function
//! pointers are read as `Option`s, so a null one is refused rather than
//! being undefined behaviour.

use super::load_error::{ActionMeta, LoadError};
use action_api::abi::{
    ABI_VERSION, ACTION_DESCRIPTOR_MIN_SIZE, ActionDescriptor, AuthRequest, ByteView, CallInfo,
    ConnectionEvent, JoinRequest, PLUGIN_DESCRIPTOR_MIN_SIZE, PLUGIN_DESCRIPTOR_REVISIONS,
    PluginDescriptor, StateSink, action_flags,
};
use std::ffi::c_void;
use std::time::Duration;

/// The longest action path accepted.
const MAX_PATH_BYTES: usize = 200;

/// The descriptor as the host reads it: [`PluginDescriptor`]'s layout,
/// with every function pointer optional so that a null one is a value we
/// can check rather than undefined behaviour.
#[repr(C)]
struct RawDescriptor {
    abi_version: u32,
    size: u32,
    name: ByteView,
    version: ByteView,
    actions: *const ActionDescriptor,
    action_count: usize,
    action_size: usize,
    call: Option<unsafe extern "C" fn(usize, *const CallInfo)>,
    shutdown: Option<unsafe extern "C" fn()>,
    authenticate: Option<unsafe extern "C" fn(*const AuthRequest)>,
    on_event: Option<unsafe extern "C" fn(*const ConnectionEvent)>,
    event_mask: u32,
    room_join: Option<unsafe extern "C" fn(*const JoinRequest)>,
    room_patterns: ByteView,
    save_state: Option<SaveStateFn>,
    restore_state: Option<RestoreStateFn>,
}

/// A plugin's [`PluginDescriptor::save_state`].
pub(crate) type SaveStateFn = unsafe extern "C" fn(*mut c_void, StateSink) -> u32;
/// A plugin's [`PluginDescriptor::restore_state`].
pub(crate) type RestoreStateFn = unsafe extern "C" fn(ByteView, *mut c_void, StateSink) -> u32;

// The mirror must keep the real layout.
const _: () =
    assert!(std::mem::size_of::<RawDescriptor>() == std::mem::size_of::<PluginDescriptor>());
const _: () = assert!(
    std::mem::offset_of!(RawDescriptor, event_mask)
        == std::mem::offset_of!(PluginDescriptor, event_mask)
);
const _: () = assert!(
    std::mem::offset_of!(RawDescriptor, save_state)
        == std::mem::offset_of!(PluginDescriptor, save_state)
);

/// What the host keeps from a descriptor.
pub(crate) struct Descriptor {
    pub(crate) name: ByteView,
    pub(crate) version: ByteView,
    pub(crate) actions: *const ActionDescriptor,
    pub(crate) action_count: usize,
    pub(crate) action_size: usize,
    pub(crate) call: unsafe extern "C" fn(usize, *const CallInfo),
    pub(crate) shutdown: Option<unsafe extern "C" fn()>,
    pub(crate) authenticate: Option<unsafe extern "C" fn(*const AuthRequest)>,
    pub(crate) on_event: Option<unsafe extern "C" fn(*const ConnectionEvent)>,
    pub(crate) event_mask: u32,
    pub(crate) room_join: Option<unsafe extern "C" fn(*const JoinRequest)>,
    pub(crate) room_patterns: ByteView,
    pub(crate) save_state: Option<SaveStateFn>,
    pub(crate) restore_state: Option<RestoreStateFn>,
}

/// Copies the revisions of the descriptor that the plugin provided; fields
/// it does not have (an older plugin) read as absent.
///
/// # Safety
/// `ptr` points to a descriptor that starts with `abi_version` and `size`
/// and is at least `size` bytes long.
pub(crate) unsafe fn read_descriptor(
    ptr: *const PluginDescriptor,
) -> Result<Descriptor, LoadError> {
    let bytes = ptr.cast::<u8>();
    // SAFETY: the two leading u32 fields exist in every revision; read
    // unaligned in case the plugin's pointer is not aligned.
    let (abi_version, size) = unsafe {
        (
            std::ptr::read_unaligned(bytes.cast::<u32>()),
            std::ptr::read_unaligned(bytes.add(4).cast::<u32>()) as usize,
        )
    };
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            found: abi_version,
            expected: ABI_VERSION,
        });
    }
    let Some(known) = PLUGIN_DESCRIPTOR_REVISIONS
        .iter()
        .rev()
        .copied()
        .find(|r| *r <= size)
    else {
        return Err(LoadError::BadDescriptor(format!(
            "it is {size} bytes, smaller than the {PLUGIN_DESCRIPTOR_MIN_SIZE} of ABI {ABI_VERSION}'s first revision"
        )));
    };
    let mut raw = std::mem::MaybeUninit::<RawDescriptor>::zeroed();
    // SAFETY: the plugin guarantees `size` >= `known` readable bytes. Every
    // field of `RawDescriptor` is an integer, a raw pointer or an optional
    // function pointer, for which any bytes read from a valid descriptor,
    // and all-zero bytes for the fields past `known`, are valid values.
    let raw = unsafe {
        std::ptr::copy_nonoverlapping(bytes, raw.as_mut_ptr().cast::<u8>(), known);
        raw.assume_init()
    };
    let Some(call) = raw.call else {
        return Err(LoadError::BadDescriptor("its call function is null".into()));
    };
    Ok(Descriptor {
        name: raw.name,
        version: raw.version,
        actions: raw.actions,
        action_count: raw.action_count,
        action_size: raw.action_size,
        call,
        shutdown: raw.shutdown,
        authenticate: raw.authenticate,
        on_event: raw.on_event,
        event_mask: if raw.on_event.is_some() {
            raw.event_mask
        } else {
            0
        },
        room_join: raw.room_join,
        room_patterns: raw.room_patterns,
        save_state: raw.save_state,
        restore_state: raw.restore_state,
    })
}

/// # Safety
/// `view` is absent or points to `len` bytes that live as long as the library.
pub(crate) unsafe fn utf8(view: ByteView, what: &str) -> Result<String, LoadError> {
    // SAFETY: per this function's contract.
    let bytes = unsafe { view.as_slice() };
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| LoadError::BadDescriptor(format!("its {what} is not UTF-8")))
}

/// # Safety
/// `descriptor.actions` points to `action_count` elements of
/// `action_size` bytes each, living as long as the library.
pub(crate) unsafe fn read_actions(descriptor: &Descriptor) -> Result<Vec<ActionMeta>, LoadError> {
    if descriptor.action_count > 0 && descriptor.actions.is_null() {
        return Err(LoadError::BadDescriptor("its action list is null".into()));
    }
    if descriptor.action_size > 4096 {
        return Err(LoadError::BadDescriptor(format!(
            "its action entries claim {} bytes each",
            descriptor.action_size
        )));
    }
    if descriptor.action_count > 10_000 {
        return Err(LoadError::BadDescriptor(format!(
            "it claims {} actions",
            descriptor.action_count
        )));
    }
    if descriptor.action_size < ACTION_DESCRIPTOR_MIN_SIZE
        || !descriptor
            .action_size
            .is_multiple_of(std::mem::align_of::<ActionDescriptor>())
    {
        return Err(LoadError::BadDescriptor(format!(
            "its action entries are {} bytes: not a multiple of {} of at least the {ACTION_DESCRIPTOR_MIN_SIZE} of ABI {ABI_VERSION}",
            descriptor.action_size,
            std::mem::align_of::<ActionDescriptor>()
        )));
    }
    if descriptor
        .actions
        .align_offset(std::mem::align_of::<ActionDescriptor>())
        != 0
    {
        return Err(LoadError::BadDescriptor(
            "its action list is not aligned".into(),
        ));
    }
    // Fields are only ever appended: what an older plugin's entry lacks
    // stays zero (absent).
    let known = descriptor
        .action_size
        .min(std::mem::size_of::<ActionDescriptor>());
    let mut actions: Vec<ActionMeta> = Vec::with_capacity(descriptor.action_count);
    for i in 0..descriptor.action_count {
        let mut raw = std::mem::MaybeUninit::<ActionDescriptor>::zeroed();
        // SAFETY: within the array per this function's contract (`i` is
        // below the count, entries are `action_size` >= `known` bytes).
        // Every field is an integer or a byte view, for which copied bytes
        // and all-zero bytes (an absent view) are valid.
        let raw = unsafe {
            let entry = descriptor
                .actions
                .cast::<u8>()
                .add(i * descriptor.action_size);
            std::ptr::copy_nonoverlapping(entry, raw.as_mut_ptr().cast::<u8>(), known);
            raw.assume_init()
        };
        // SAFETY: the views live as long as the library.
        let path = unsafe { utf8(raw.path, "action path") }?;
        check_path(&path)?;
        if actions.iter().any(|a| a.path == path) {
            return Err(LoadError::BadDescriptor(format!(
                "it lists action '{path}' twice"
            )));
        }
        // SAFETY: as above.
        let scopes = unsafe { utf8(raw.scopes, "scope list") }?;
        actions.push(ActionMeta {
            path,
            public: raw.flags & action_flags::PUBLIC != 0,
            inline: raw.flags & action_flags::INLINE != 0,
            rate_limit: (raw.rate_per_sec > 0).then(|| (raw.rate_per_sec, raw.rate_burst.max(1))),
            timeout: (raw.timeout_ms > 0).then(|| Duration::from_millis(raw.timeout_ms)),
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        });
    }
    Ok(actions)
}

pub(crate) fn check_path(path: &str) -> Result<(), LoadError> {
    let refuse = |why: &str| {
        Err(LoadError::BadDescriptor(format!(
            "action path '{path}' {why}"
        )))
    };
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return refuse(&format!("must be 1 to {MAX_PATH_BYTES} bytes"));
    }
    if path.starts_with("rpc.") {
        return refuse("uses the reserved 'rpc.' prefix");
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("contains whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An action entry as revision 2 of the ABI laid it out (no rate
    /// limit fields).
    #[repr(C)]
    struct Revision2Action {
        path: ByteView,
        flags: u32,
        timeout_ms: u64,
        scopes: ByteView,
    }

    unsafe extern "C" fn no_call(_: usize, _: *const CallInfo) {}

    fn descriptor(actions: *const ActionDescriptor, action_size: usize) -> Descriptor {
        Descriptor {
            name: ByteView::of(b"t"),
            version: ByteView::of(b"1"),
            actions,
            action_count: 1,
            action_size,
            call: no_call,
            shutdown: None,
            authenticate: None,
            on_event: None,
            event_mask: 0,
            room_patterns: ByteView::ABSENT,
            room_join: None,
            save_state: None,
            restore_state: None,
        }
    }

    #[test]
    fn an_older_entry_keeps_its_scopes_and_has_no_rate_limit() {
        let old = Revision2Action {
            path: ByteView::of(b"a/b"),
            flags: 0,
            timeout_ms: 0,
            scopes: ByteView::of(b"admin"),
        };
        let d = descriptor(
            std::ptr::from_ref(&old).cast(),
            std::mem::size_of::<Revision2Action>(),
        );
        // SAFETY: one entry of the size given, living through the call.
        let actions = unsafe { read_actions(&d) }.unwrap();
        assert_eq!(actions[0].scopes, ["admin"]);
        assert_eq!(actions[0].rate_limit, None);

        let new = ActionDescriptor {
            path: ByteView::of(b"a/c"),
            flags: 0,
            timeout_ms: 0,
            scopes: ByteView::ABSENT,
            rate_per_sec: 5,
            rate_burst: 0,
        };
        let d = descriptor(
            std::ptr::from_ref(&new),
            std::mem::size_of::<ActionDescriptor>(),
        );
        // SAFETY: as above.
        let actions = unsafe { read_actions(&d) }.unwrap();
        assert_eq!(
            actions[0].rate_limit,
            Some((5, 1)),
            "a burst of at least one"
        );
    }
}
