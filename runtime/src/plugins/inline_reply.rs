//! The reply slot of a call put to a plugin on the caller's own thread (an
//! inline action): a plugin that answers before it returns, as inline
//! actions do, needs no entry in the handle table and no channel.
//!
//! - Each thread that runs inline calls owns one slot in a fixed table. A
//!   call's handle names the slot and the call's sequence number, with the
//!   top bit set, which no table handle has.
//! - The slot's state word holds the sequence number of the call in it and
//!   its phase. While the plugin runs the call the phase is `ACTIVE`; the
//!   first completion, from any thread, moves it to `COMPLETING` (which
//!   gives that thread the slot's cells), writes the answer, then `DONE`.
//!   The caller takes the answer and frees the slot.
//! - A plugin that returns without answering (it answers later, from a
//!   thread of its own) has its handle moved to a map of handles answered
//!   later, with a [`PendingReply`] pinning its generation, under that
//!   map's lock: a completion that finds the slot moved on finds the handle
//!   there. A handle that names no live call (completed before, or made up)
//!   is refused with a log line, as for table handles.
//! - While a call is in its slot the caller borrows the generation it runs
//!   on; a completion from another thread takes its own pin from that
//!   borrow, and the caller waits for such a completion to end before it
//!   lets the borrow go.

use super::replies::{Completion, PendingReply, Pinned, body_after_room, deliver, park};
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use tokio::sync::oneshot;

/// How many threads may hold a slot at once; an inline call on any other
/// thread goes through the handle table.
const SLOTS: usize = 1024;
/// Set in every slot handle and in no table handle (the table keeps its
/// keys' top bits clear).
pub(crate) const SLOT_HANDLE: usize = 1 << 63;
/// Where a slot handle's slot index starts; the sequence number is below.
const INDEX_SHIFT: u32 = 52;
/// The sequence numbers a slot counts through before wrapping.
const SEQ_MASK: u64 = (1 << INDEX_SHIFT) - 1;

/// The slot holds no call; only its owner thread moves it out of this.
const IDLE: u64 = 0;
/// The plugin runs the call and has not answered.
const ACTIVE: u64 = 1;
/// A completion is writing its answer into the slot.
const COMPLETING: u64 = 2;
/// The answer is in the slot, for the caller to take.
const DONE: u64 = 3;

/// A slot's state word: a call's sequence number and its phase.
const fn state(seq: u64, phase: u64) -> u64 {
    (seq << 2) | phase
}

/// A borrowed generation, as a slot keeps it: enough to take a pin of
/// its own from it while the borrow lasts.
#[derive(Clone, Copy)]
struct PinSource {
    /// The `Arc<T>` borrowed.
    generation: *const (),
    /// Clones it as an `Arc<dyn Pinned>`.
    clone: unsafe fn(*const ()) -> Arc<dyn Pinned>,
}

impl PinSource {
    fn of<T: Pinned + 'static>(generation: &Arc<T>) -> PinSource {
        /// # Safety
        /// `generation` points to a live `Arc<T>`.
        unsafe fn clone<T: Pinned + 'static>(generation: *const ()) -> Arc<dyn Pinned> {
            // SAFETY: the caller's contract.
            let generation = unsafe { &*generation.cast::<Arc<T>>() };
            Arc::clone(generation) as Arc<dyn Pinned>
        }
        PinSource {
            generation: std::ptr::from_ref(generation).cast(),
            clone: clone::<T>,
        }
    }

    /// A pin of its own on the generation.
    ///
    /// # Safety
    /// The borrow this was made from still lasts.
    unsafe fn pin(self) -> Arc<dyn Pinned> {
        // SAFETY: the caller's contract.
        unsafe { (self.clone)(self.generation) }
    }
}

/// One thread's reply slot. Its cells belong to the owner thread while the
/// state is `IDLE` or `DONE`, and to the thread that moved it from
/// `ACTIVE` to `COMPLETING` until it stores `DONE`.
#[repr(align(128))]
struct Slot {
    state: AtomicU64,
    /// Room to leave before a success's body (see [`PendingReply::leaving_room`]).
    room: UnsafeCell<usize>,
    /// The generation the call runs on, while the call is in the slot.
    generation: UnsafeCell<Option<PinSource>>,
    /// The answer, between `DONE` and the caller taking it.
    answer: UnsafeCell<Option<Completion>>,
}

// SAFETY: the cells are read and written only by the thread the state word
// gives them to (see `Slot`), and each hand-over is a release store or
// exchange matched by an acquire load or exchange.
unsafe impl Sync for Slot {}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU64::new(state(0, IDLE)),
            room: UnsafeCell::new(0),
            generation: UnsafeCell::new(None),
            answer: UnsafeCell::new(None),
        }
    }
}

/// Every slot; a thread claims one the first time it runs an inline call.
static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Slots never claimed start here.
static NEVER_CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// Slots whose threads have exited, for new threads to claim.
static RETURNED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Handles of calls whose plugin returned without answering.
static LATER: LazyLock<Mutex<HashMap<usize, PendingReply>>> = LazyLock::new(Mutex::default);

/// A thread's claim on its slot, given back when the thread exits.
struct OwnedSlot(Option<usize>);

impl OwnedSlot {
    fn claim() -> OwnedSlot {
        let returned = RETURNED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        OwnedSlot(returned.or_else(|| {
            let next = NEVER_CLAIMED.fetch_add(1, Ordering::Relaxed);
            (next < SLOTS).then_some(next)
        }))
    }
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        let _ = MY_INDEX.try_with(|mine| mine.set(NO_SLOT));
        if let Some(index) = self.0 {
            RETURNED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(index);
        }
    }
}

thread_local! {
    /// This thread's claim, made the first time it runs an inline call.
    static MINE: OwnedSlot = OwnedSlot::claim();
    /// The index of the slot this thread claimed (`NO_SLOT` before it
    /// claimed one, or if none was free): read without claiming, so a
    /// thread that only completes calls (one of a plugin's) takes none.
    static MY_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(NO_SLOT) };
}

/// No slot claimed.
const NO_SLOT: usize = usize::MAX;

/// This thread's slot, claimed now if it has none yet (`None` if every
/// slot is taken, or the thread is exiting).
fn claim_my_slot() -> Option<usize> {
    let index = MY_INDEX.with(std::cell::Cell::get);
    if index != NO_SLOT {
        return Some(index);
    }
    let claimed = MINE.try_with(|slot| slot.0).ok().flatten()?;
    MY_INDEX.with(|mine| mine.set(claimed));
    Some(claimed)
}

/// Whether this thread owns slot `index` (claims nothing).
fn is_my_slot(index: usize) -> bool {
    MY_INDEX.with(std::cell::Cell::get) == index
}

/// A call in this thread's slot, from just before the plugin is called
/// until its answer (or the promise of one) is taken.
pub(crate) struct InlineCall<'a> {
    index: usize,
    seq: u64,
    generation: PinSource,
    /// Whether [`InlineCall::end`] ran.
    ended: bool,
    /// The generation stays borrowed while the call is in the slot.
    _borrow: PhantomData<&'a ()>,
}

/// How an inline call ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The plugin answered before it returned.
    Answered(Completion),
    /// It will answer later, on this channel.
    Later(oneshot::Receiver<Completion>),
}

impl<'a> InlineCall<'a> {
    /// Puts a call to `generation` in this thread's slot, leaving `room`
    /// before a success's body, and asks `question` (which hands the
    /// plugin the handle it is given) while it is there; then takes the
    /// answer, or moves the handle to the map of calls answered later
    /// (`None` only if the answer vanished, which nothing does). `question`
    /// comes back unasked when the thread has no slot, or its slot holds
    /// a call already (a call made from inside another): then the call
    /// takes a table handle.
    ///
    /// A closure, not a guard the caller holds: the slot must never
    /// outlive the borrow of `generation` it keeps (as a forgotten guard
    /// would).
    pub(crate) fn run<T: Pinned + 'static, Q: FnOnce(*mut c_void)>(
        generation: &'a Arc<T>,
        room: usize,
        question: Q,
    ) -> Result<Option<Ended>, Q> {
        let Some(call) = InlineCall::begin(generation, room) else {
            return Err(question);
        };
        // Unwinding out of `question` frees the slot too (`Drop`).
        question(call.handle());
        Ok(call.end())
    }

    fn begin<T: Pinned + 'static>(generation: &'a Arc<T>, room: usize) -> Option<InlineCall<'a>> {
        let index = claim_my_slot()?;
        let slot = TABLE.get(index)?;
        // Only this thread moves the slot out of `IDLE`.
        let now = slot.state.load(Ordering::Relaxed);
        if now & 3 != IDLE {
            return None;
        }
        let seq = ((now >> 2) + 1) & SEQ_MASK;
        let generation = PinSource::of(generation);
        // SAFETY: `IDLE`: the cells are this thread's (see `Slot`).
        unsafe {
            *slot.room.get() = room;
            *slot.generation.get() = Some(generation);
        }
        slot.state.store(state(seq, ACTIVE), Ordering::Release);
        Some(InlineCall {
            index,
            seq,
            generation,
            ended: false,
            _borrow: PhantomData,
        })
    }

    /// The handle to give the plugin.
    fn handle(&self) -> *mut c_void {
        (SLOT_HANDLE | (self.index << INDEX_SHIFT) | self.seq as usize) as *mut c_void
    }

    /// Takes the answer, or moves the handle to the map of handles answered
    /// later. Call it once the plugin has returned.
    fn end(mut self) -> Option<Ended> {
        self.ended = true;
        self.settle()
    }

    fn settle(&self) -> Option<Ended> {
        let slot = TABLE.get(self.index)?;
        let active = state(self.seq, ACTIVE);
        if slot.state.load(Ordering::Acquire) == active {
            let mut later = LATER.lock().unwrap_or_else(PoisonError::into_inner);
            // Under the map's lock: a completion that sees the slot moved
            // on looks in the map only once the handle is there.
            if slot
                .state
                .compare_exchange(
                    active,
                    state(self.seq, IDLE),
                    Ordering::Acquire,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                let (pending, answer) = PendingReply::new();
                // SAFETY: the generation is borrowed for `'a`; so are the
                // cells, the slot being `IDLE` again.
                let pending = unsafe {
                    pending
                        .holding(self.generation.pin())
                        .leaving_room(*slot.room.get())
                };
                let replaced = later.insert(self.handle() as usize, pending);
                drop(later);
                // Never there (a sequence number names one call), and
                // dropped outside the lock if it were: its pin's drop may
                // run a shutdown hook that completes calls.
                drop(replaced);
                return Some(Ended::Later(answer));
            }
        }
        // Answered (or being answered, from another thread).
        let done = state(self.seq, DONE);
        let mut spins = 0u32;
        while slot.state.load(Ordering::Acquire) != done {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: `DONE`: the cells are this thread's again.
        let answer = unsafe { (*slot.answer.get()).take() };
        slot.state.store(state(self.seq, IDLE), Ordering::Relaxed);
        answer.map(Ended::Answered)
    }
}

impl Drop for InlineCall<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Unwinding: the slot must be freed before the borrow ends.
            drop(self.settle());
        }
    }
}

/// A completion's claim on a slot: stores `DONE` when it ends, so the
/// caller never waits for a completion that panicked (it then finds no
/// answer, and the call ends as not asked).
struct Completing<'s> {
    slot: &'s Slot,
    seq: u64,
}

impl Drop for Completing<'_> {
    fn drop(&mut self) {
        self.slot
            .state
            .store(state(self.seq, DONE), Ordering::Release);
    }
}

/// Completes the call a slot handle names, from any thread; a handle that
/// names no call waiting is refused with a log line.
pub(crate) fn complete(handle: usize, status: u32, body: &[u8], serialized: bool) {
    let index = (handle & !SLOT_HANDLE) >> INDEX_SHIFT;
    let seq = (handle as u64) & SEQ_MASK;
    if let Some(slot) = TABLE.get(index)
        && slot
            .state
            .compare_exchange(
                state(seq, ACTIVE),
                state(seq, COMPLETING),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    {
        // `DONE` is stored whatever happens from here (a panic included),
        // or the caller would wait for ever.
        let completing = Completing { slot, seq };
        // SAFETY: winning the exchange gave this thread the cells, and the
        // caller keeps the generation borrowed until it sees `DONE`.
        let (room, generation) = unsafe { (*slot.room.get(), *slot.generation.get()) };
        let answer = Completion {
            status,
            body: body_after_room(status, body, room),
            serialized,
        };
        // Completed from another thread: that thread may still be in the
        // plugin's code once the caller has let the generation go.
        let pin = if is_my_slot(index) {
            None
        } else {
            // SAFETY: as above.
            generation.map(|generation| unsafe { generation.pin() })
        };
        // SAFETY: as above.
        unsafe { *slot.answer.get() = Some(answer) };
        drop(completing);
        if let Some(pin) = pin {
            park(pin);
        }
        return;
    }
    let pending = LATER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&handle);
    match pending {
        Some(pending) => deliver(pending, status, body, serialized),
        None => super::replies::refuse_unknown_handle(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    struct Generation(PathBuf);

    impl Pinned for Generation {
        fn image(&self) -> &Path {
            &self.0
        }
    }

    fn generation() -> Arc<Generation> {
        Arc::new(Generation(PathBuf::from("/nonexistent/inline-test.so")))
    }

    fn answered(ended: Option<Ended>) -> Option<(u32, Vec<u8>)> {
        match ended {
            Some(Ended::Answered(done)) => Some((done.status, done.body)),
            _ => None,
        }
    }

    #[test]
    fn an_answer_given_before_returning_is_taken_from_the_slot() {
        let generation = generation();
        let call = InlineCall::begin(&generation, 2).expect("a slot");
        complete(call.handle() as usize, 0, b"[1]", false);
        assert_eq!(answered(call.end()), Some((0, b"  [1]".to_vec())));
        assert_eq!(Arc::strong_count(&generation), 1, "no pin kept");
    }

    #[test]
    fn a_second_completion_and_a_made_up_handle_are_refused() {
        let generation = generation();
        let call = InlineCall::begin(&generation, 0).expect("a slot");
        let handle = call.handle() as usize;
        complete(handle, 0, b"1", false);
        complete(handle, 0, b"2", false);
        complete(handle ^ 1, 0, b"3", false);
        complete(SLOT_HANDLE | (SLOTS + 5) << INDEX_SHIFT, 0, b"4", false);
        assert_eq!(answered(call.end()), Some((0, b"1".to_vec())));
        complete(handle, 0, b"5", false);
        // The slot serves the next call.
        let call = InlineCall::begin(&generation, 0).expect("the slot again");
        assert_ne!(call.handle() as usize, handle);
        complete(call.handle() as usize, 0, b"6", false);
        assert_eq!(answered(call.end()), Some((0, b"6".to_vec())));
    }

    #[test]
    fn a_call_made_from_inside_another_takes_no_slot() {
        let generation = generation();
        let outer = InlineCall::begin(&generation, 0).expect("a slot");
        assert!(InlineCall::begin(&generation, 0).is_none());
        complete(outer.handle() as usize, 0, b"1", false);
        assert!(answered(outer.end()).is_some());
    }

    #[test]
    fn a_completion_that_fails_midway_leaves_the_caller_no_answer_not_a_hang() {
        let generation = generation();
        let call = InlineCall::begin(&generation, 0).expect("a slot");
        let slot = &TABLE[call.index];
        let seq = call.seq;
        // What `complete` does before it could fail: claim the slot.
        assert!(
            slot.state
                .compare_exchange(
                    state(seq, ACTIVE),
                    state(seq, COMPLETING),
                    Ordering::Acquire,
                    Ordering::Relaxed
                )
                .is_ok()
        );
        drop(Completing { slot, seq });
        assert!(call.end().is_none(), "ended, with no answer");
        // The slot serves the next call.
        let asked = InlineCall::run(&generation, 0, |h| complete(h as usize, 0, b"1", false));
        assert!(matches!(asked, Ok(Some(Ended::Answered(_)))));
    }

    #[test]
    fn a_question_with_no_slot_to_use_comes_back_unasked() {
        let generation = generation();
        let mut inner_came_back = false;
        let outer = InlineCall::run(&generation, 0, |outer| {
            let inner = InlineCall::run(&generation, 0, |_| unreachable!("not asked here"));
            inner_came_back = inner.is_err();
            complete(outer as usize, 0, b"1", false);
        });
        assert!(matches!(outer, Ok(Some(Ended::Answered(_)))));
        drop(outer);
        assert!(inner_came_back);
    }

    #[tokio::test]
    async fn an_answer_given_later_arrives_through_the_map_with_the_generation_pinned() {
        let generation = generation();
        let call = InlineCall::begin(&generation, 1).expect("a slot");
        let handle = call.handle() as usize;
        let Some(Ended::Later(answer)) = call.end() else {
            panic!("no answer was given yet");
        };
        assert_eq!(Arc::strong_count(&generation), 2, "pinned while it waits");
        // The slot is free for the next call meanwhile.
        let next = InlineCall::begin(&generation, 0).expect("the slot again");
        complete(next.handle() as usize, 0, b"n", false);
        assert!(answered(next.end()).is_some());
        std::thread::spawn(move || complete(handle, 0, b"7", false))
            .join()
            .expect("the completing thread");
        let done = answer.await.expect("delivered");
        assert_eq!(done.body, b" 7".to_vec());
        complete(handle, 0, b"again", false);
    }

    #[test]
    fn an_answer_from_another_thread_during_the_call_is_taken_once_it_is_written() {
        let generation = generation();
        for round in 0..200u32 {
            let call = InlineCall::begin(&generation, 0).expect("a slot");
            let handle = call.handle() as usize;
            let body = round.to_string();
            let completer = std::thread::spawn({
                let body = body.clone();
                move || complete(handle, 0, body.as_bytes(), false)
            });
            // Half the rounds end the call before the other thread answers
            // (the answer comes through the map), half after.
            if round % 2 == 0 {
                completer.join().expect("the completing thread");
                assert_eq!(answered(call.end()), Some((0, body.into_bytes())));
            } else {
                let ended = call.end();
                completer.join().expect("the completing thread");
                match ended {
                    Some(Ended::Answered(done)) => assert_eq!(done.body, body.into_bytes()),
                    Some(Ended::Later(mut answer)) => {
                        assert_eq!(
                            answer.try_recv().map(|d| d.body).ok(),
                            Some(body.into_bytes())
                        )
                    }
                    None => panic!("the call vanished"),
                }
            }
        }
    }
}
