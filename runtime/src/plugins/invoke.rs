//! Asking a plugin something and reading its answer: the one place that
//! reads the ABI's completion statuses.
//!
//! An action call, an auth hook and a join hook all go the same way: the
//! question is put to the plugin on a thread that may block (the action
//! pool, tokio's blocking pool, or, for an action marked inline, the
//! caller's own), the plugin completes its reply handle (now or later,
//! from any thread), and the caller awaits the answer under a deadline.
//! An inline call's handle is its thread's reply slot
//! ([`super::inline_reply`]), whose answer is taken as the plugin returns.
//! What comes back is the plugin's JSON body or a [`PluginFault`]; callers
//! turn a fault into their own refusal and never see a status code.

use super::inline_reply::{Ended, InlineCall};
use super::replies::{Completion, PendingReply, Pinned};
use crate::action_threads::ActionThreads;
use action_api::abi::status;
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a question may go unanswered: `after`, counted from `from`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    /// When the wait began.
    from: Instant,
    /// How long it may last.
    after: Duration,
    /// Whether whoever awaits the answer polls the wait again within
    /// [`SWEPT_EVERY`] of its first poll (see [`Deadline::swept`]).
    swept: bool,
}

/// How often a caller that keeps deadlines swept (a connection's running
/// calls) polls every wait it keeps, at the longest.
pub(crate) const SWEPT_EVERY: Duration = Duration::from_millis(100);

impl Deadline {
    /// `after` from now.
    pub(crate) fn from_now(after: Duration) -> Deadline {
        Deadline::starting(Instant::now(), after)
    }

    /// `after` from `from`, a moment the caller has read already (a call's
    /// start: no clock read of its own on the call path).
    pub(crate) fn starting(from: Instant, after: Duration) -> Deadline {
        Deadline {
            from,
            after,
            swept: false,
        }
    }

    /// The same deadline, for a caller that polls the wait again within
    /// [`SWEPT_EVERY`] of its first poll whether or not it was woken. The
    /// wait then starts its timer only at that second poll, if the answer
    /// has not come by then: most action calls answer within
    /// microseconds, and a timer set and cancelled on every call cost
    /// about 600 instructions of a pool call's 11,500 (callgrind). A
    /// deadline shorter than twice the sweep keeps its own timer from the
    /// start.
    pub(crate) fn swept(self) -> Deadline {
        Deadline {
            swept: self.after >= 2 * SWEPT_EVERY,
            ..self
        }
    }

    /// Whether the wait relies on its caller's sweep for its second poll.
    pub(crate) fn is_swept(&self) -> bool {
        self.swept
    }
}

/// Why a plugin gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginFault {
    /// The plugin said no; the body is its error object (JSON, as the
    /// plugin wrote it: the caller decides how far to trust it).
    #[error("the plugin refused")]
    Refused(Vec<u8>),
    /// The plugin panicked; the panic's message.
    #[error("it panicked: {0}")]
    Panicked(String),
    /// The plugin ended with a status this host does not know.
    #[error("it ended with unknown status {status}")]
    UnknownStatus {
        /// The status it gave.
        status: u32,
        /// Its body, as text, for the log.
        body: String,
    },
    /// The reply was dropped unanswered: the question never reached the
    /// plugin (the server is stopping) or the plugin let go of its handle.
    #[error("it could not be asked")]
    NotAsked,
    /// No answer within the deadline (the plugin may still answer later;
    /// that answer is dropped).
    #[error("it did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
}

impl PluginFault {
    /// The `message` of a refusal's error object, cut to `max_chars`, if
    /// this is a refusal that gives one.
    pub(crate) fn refusal_message(&self, max_chars: usize) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Reason {
            message: String,
        }
        let PluginFault::Refused(body) = self else {
            return None;
        };
        let reason = serde_json::from_slice::<Reason>(body).ok()?;
        Some(reason.message.chars().take(max_chars).collect())
    }
}

/// A plugin's successful answer.
#[derive(Debug)]
pub(crate) struct Answered {
    /// Its JSON body.
    pub(crate) body: Vec<u8>,
    /// Whether the plugin's serializer wrote it (`complete_serialized`):
    /// then it is well-formed JSON, and need not be parsed again.
    pub(crate) serialized: bool,
}

/// A question put to a plugin, whose answer may not have come yet.
#[derive(Debug)]
pub(crate) struct Asked {
    answer: Answer,
}

/// Where a question's answer is.
#[derive(Debug)]
enum Answer {
    /// Given already (`None` once taken, or if the plugin let go of its
    /// handle).
    Given(Option<Completion>),
    /// To come through this channel.
    Awaited(oneshot::Receiver<Completion>),
}

impl Asked {
    /// The answer, if the plugin has already given it (an inline action
    /// usually has by the time `ask_here` returns).
    pub(crate) fn now(&mut self) -> Option<Result<Answered, PluginFault>> {
        match &mut self.answer {
            Answer::Given(done) => Some(done.take().map_or(Err(PluginFault::NotAsked), read)),
            Answer::Awaited(answer) => match answer.try_recv() {
                Ok(done) => Some(read(done)),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(PluginFault::NotAsked)),
            },
        }
    }

    /// Waits for the answer until `deadline`.
    pub(crate) fn answer(self, deadline: Deadline) -> Answering {
        Answering {
            answer: self.answer,
            deadline,
            waited: false,
            timer: None,
        }
    }
}

/// The wait for an answer under a deadline ([`Asked::answer`]).
#[derive(Debug)]
pub(crate) struct Answering {
    answer: Answer,
    deadline: Deadline,
    /// Polled before and found no answer (a swept deadline's timer starts
    /// at the next poll that finds none).
    waited: bool,
    /// The deadline's timer, once started.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Answering {
    type Output = Result<Answered, PluginFault>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let answer = match &mut this.answer {
            Answer::Given(done) => {
                return Poll::Ready(done.take().map_or(Err(PluginFault::NotAsked), read));
            }
            Answer::Awaited(answer) => answer,
        };
        if let Poll::Ready(done) = Pin::new(answer).poll(cx) {
            return Poll::Ready(done.map_or(Err(PluginFault::NotAsked), read));
        }
        let timer = match &mut this.timer {
            Some(timer) => timer,
            None => {
                // A deadline beyond what an `Instant` holds is no deadline.
                let Some(until) = this.deadline.from.checked_add(this.deadline.after) else {
                    return Poll::Pending;
                };
                if this.deadline.swept && !this.waited {
                    // The caller polls again within the sweep.
                    this.waited = true;
                    return Poll::Pending;
                }
                this.timer
                    .insert(Box::pin(tokio::time::sleep_until(until.into())))
            }
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(PluginFault::TimedOut(this.deadline.after))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Where a question is put to a plugin.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Thread<'a> {
    /// The action pool (action calls).
    Actions(&'a ActionThreads),
    /// tokio's blocking pool (hooks, which are rare and bounded by their
    /// callers' permits).
    Blocking,
}

/// Puts `question` to a plugin on `thread` and waits for its answer until
/// `deadline`. `question` hands the reply handle to the plugin;
/// whatever it owns (call slots, arguments) stays with the thread until
/// the plugin returns, even past the deadline.
pub(crate) async fn invoke(
    thread: Thread<'_>,
    deadline: Deadline,
    question: impl FnOnce(PendingReply) + Send + 'static,
) -> Result<Answered, PluginFault> {
    let (pending, answer) = PendingReply::new();
    match thread {
        Thread::Actions(threads) => threads.run(move || question(pending)),
        Thread::Blocking => {
            // The handle is watched through `answer`, not the task.
            drop(tokio::task::spawn_blocking(move || question(pending)));
        }
    }
    let answer = Answer::Awaited(answer);
    Asked { answer }.answer(deadline).await
}

/// Puts `question` to `generation` right here, on the caller's thread (for
/// an action its author marked inline: it never blocks). `question` hands
/// the plugin the reply handle it is given; a success's body comes after
/// `room` bytes (see [`PendingReply::leaving_room`]).
pub(crate) fn ask_here<T: Pinned + 'static>(
    generation: &Arc<T>,
    room: usize,
    question: impl FnOnce(*mut c_void),
) -> Asked {
    let question = match InlineCall::run(generation, room, question) {
        Ok(Some(Ended::Answered(done))) => {
            let answer = Answer::Given(Some(done));
            return Asked { answer };
        }
        Ok(Some(Ended::Later(answer))) => {
            let answer = Answer::Awaited(answer);
            return Asked { answer };
        }
        Ok(None) => {
            let answer = Answer::Given(None);
            return Asked { answer };
        }
        Err(question) => question,
    };
    // No slot on this thread (or a call from inside another): a table
    // handle, pinning the generation.
    let (pending, answer) = PendingReply::new();
    question(
        pending
            .holding(Arc::clone(generation) as Arc<dyn Pinned>)
            .leaving_room(room)
            .into_handle(),
    );
    let answer = Answer::Awaited(answer);
    Asked { answer }
}

/// Reads a completion's status.
fn read(done: Completion) -> Result<Answered, PluginFault> {
    match done.status {
        status::OK => Ok(Answered {
            body: done.body,
            serialized: done.serialized,
        }),
        status::ACTION_ERROR => Err(PluginFault::Refused(done.body)),
        status::PANICKED => Err(PluginFault::Panicked(
            String::from_utf8_lossy(&done.body).into_owned(),
        )),
        other => Err(PluginFault::UnknownStatus {
            status: other,
            body: String::from_utf8_lossy(&done.body).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use action_api::abi::ByteView;

    /// A generation as a reply's pin sees it.
    #[derive(Debug)]
    struct TestGeneration;

    impl Pinned for TestGeneration {
        fn image(&self) -> &std::path::Path {
            std::path::Path::new("/nonexistent/invoke-test.so")
        }
    }

    /// Completes `handle` as a plugin would.
    fn complete_handle(handle: *mut c_void, status: u32, body: &[u8]) {
        // SAFETY: the handle is completed once; the body outlives the call.
        unsafe { super::super::replies::complete_call(handle, status, ByteView::of(body)) };
    }

    /// Completes `pending` as a plugin would, through its table handle.
    fn complete(pending: PendingReply, status: u32, body: &[u8]) {
        complete_handle(pending.into_handle(), status, body);
    }

    fn completing(status: u32, body: &[u8]) -> Asked {
        ask_here(&Arc::new(TestGeneration), 0, |handle| {
            complete_handle(handle, status, body)
        })
    }

    #[test]
    fn each_status_reads_as_its_answer_or_fault() {
        assert_eq!(
            completing(status::OK, b"{\"a\":1}")
                .now()
                .map(|a| a.ok().map(|a| (a.body, a.serialized))),
            Some(Some((b"{\"a\":1}".to_vec(), false)))
        );
        let serialized = ask_here(&Arc::new(TestGeneration), 0, |handle| {
            // SAFETY: as in `complete_handle`.
            unsafe { super::super::replies::complete_serialized(handle, ByteView::of(b"[1]")) };
        })
        .now()
        .and_then(Result::ok)
        .map(|a| (a.body, a.serialized));
        assert_eq!(serialized, Some((b"[1]".to_vec(), true)));
        let refused = completing(status::ACTION_ERROR, br#"{"code":7,"message":"no way"}"#)
            .now()
            .and_then(Result::err);
        assert!(matches!(refused, Some(PluginFault::Refused(_))));
        assert_eq!(
            refused.and_then(|f| f.refusal_message(3)),
            Some("no ".to_owned())
        );
        assert!(matches!(
            completing(status::PANICKED, b"boom").now(),
            Some(Err(PluginFault::Panicked(m))) if m == "boom"
        ));
        assert!(matches!(
            completing(99, b"?").now(),
            Some(Err(PluginFault::UnknownStatus { status: 99, .. }))
        ));
    }

    #[test]
    fn a_success_comes_after_the_room_asked_for_and_a_refusal_as_it_is() {
        let generation = Arc::new(TestGeneration);
        let answered = ask_here(&generation, 5, |h| complete_handle(h, status::OK, b"[1]"))
            .now()
            .and_then(Result::ok);
        let body = answered.map(|a| a.body).unwrap_or_default();
        assert_eq!(body, b"     [1]".to_vec());
        assert_eq!(body.capacity(), 5 + 3 + 1, "one byte to spare, no more");
        let refused = ask_here(&generation, 5, |h| {
            complete_handle(h, status::ACTION_ERROR, b"{}")
        })
        .now()
        .and_then(Result::err);
        assert!(matches!(refused, Some(PluginFault::Refused(body)) if body == b"{}"));
    }

    #[test]
    fn a_call_from_inside_another_takes_a_table_handle_and_is_answered_alike() {
        let generation = Arc::new(TestGeneration);
        let mut inner = None;
        let mut outer = ask_here(&generation, 1, |outer| {
            // As `LoadedPlugin` calls a plugin: pins released inside are
            // dropped as the outermost call returns.
            let _inside = super::super::replies::InPlugin::enter();
            let mut asked = ask_here(&generation, 2, |h| {
                assert_eq!(
                    h as usize & super::super::inline_reply::SLOT_HANDLE,
                    0,
                    "not a slot handle"
                );
                complete_handle(h, status::OK, b"[2]");
            });
            inner = asked.now().and_then(Result::ok).map(|a| a.body);
            complete_handle(outer, status::OK, b"[1]");
        });
        assert_eq!(inner, Some(b"  [2]".to_vec()));
        let outer = outer.now().and_then(Result::ok).map(|a| a.body);
        assert_eq!(outer, Some(b" [1]".to_vec()));
        assert_eq!(Arc::strong_count(&generation), 1, "no pin kept");
    }

    #[tokio::test]
    async fn an_inline_action_that_answers_later_is_awaited_with_its_generation_pinned() {
        let generation = Arc::new(TestGeneration);
        let mut kept = None;
        let mut asked = ask_here(&generation, 0, |h| kept = Some(h as usize));
        assert!(asked.now().is_none(), "no answer yet");
        assert_eq!(Arc::strong_count(&generation), 2, "pinned while it waits");
        let handle = kept.expect("the plugin kept its handle");
        std::thread::spawn(move || complete_handle(handle as *mut c_void, status::OK, b"[3]"))
            .join()
            .expect("the answering thread");
        let answered = asked
            .answer(Deadline::from_now(Duration::from_secs(30)))
            .await;
        assert_eq!(answered.ok().map(|a| a.body), Some(b"[3]".to_vec()));
    }

    #[tokio::test]
    async fn an_inline_action_that_never_answers_times_out() {
        let asked = ask_here(&Arc::new(TestGeneration), 0, |_kept| {});
        let waited = asked
            .answer(Deadline::from_now(Duration::from_millis(20)))
            .await;
        assert!(matches!(waited, Err(PluginFault::TimedOut(_))));
    }

    #[test]
    fn a_reply_dropped_unanswered_reads_as_not_asked() {
        let (pending, answer) = PendingReply::new();
        drop(pending);
        let mut asked = Asked {
            answer: Answer::Awaited(answer),
        };
        assert!(matches!(asked.now(), Some(Err(PluginFault::NotAsked))));
    }

    #[test]
    fn a_refusal_without_a_message_gives_none() {
        assert_eq!(
            PluginFault::Refused(b"[]".to_vec()).refusal_message(10),
            None
        );
        assert_eq!(PluginFault::NotAsked.refusal_message(10), None);
    }

    #[tokio::test]
    async fn an_unanswered_question_times_out_and_a_late_answer_arrives() {
        let (tx, rx) = std::sync::mpsc::channel();
        let waited = invoke(
            Thread::Blocking,
            Deadline::from_now(Duration::from_millis(20)),
            move |pending| {
                // Kept, not completed: the plugin "hangs".
                let _ = tx.send(pending);
            },
        )
        .await;
        assert!(matches!(waited, Err(PluginFault::TimedOut(d)) if d == Duration::from_millis(20)));
        // The handle outlived the wait; completing it now is harmless.
        let pending = rx.recv().expect("the question ran");
        complete(pending, status::OK, b"late");

        let answered = invoke(
            Thread::Blocking,
            Deadline::from_now(Duration::from_secs(30)),
            |pending| complete(pending, status::OK, b"1"),
        )
        .await;
        assert_eq!(answered.ok().map(|a| a.body), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn a_question_on_the_action_pool_is_answered() {
        let threads = ActionThreads::new(2);
        let answered = invoke(
            Thread::Actions(&threads),
            Deadline::from_now(Duration::from_secs(30)),
            |pending| complete(pending, status::OK, b"2"),
        )
        .await;
        assert_eq!(answered.ok().map(|a| a.body), Some(b"2".to_vec()));
    }

    /// Polls `waiting` once, with a waker that does nothing.
    fn poll_once(waiting: &mut Answering) -> Poll<Result<Answered, PluginFault>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(waiting).poll(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_swept_wait_starts_its_timer_only_when_polled_again_unanswered() {
        let (pending, answer) = PendingReply::new();
        let asked = Asked {
            answer: Answer::Awaited(answer),
        };
        // On tokio's paused clock, which moves only when told to or to the
        // next timer: the times below are exact.
        let started = tokio::time::Instant::now();
        let deadline = Deadline::starting(started.into_std(), 3 * SWEPT_EVERY).swept();
        let mut waiting = asked.answer(deadline);
        assert!(poll_once(&mut waiting).is_pending());
        assert!(waiting.timer.is_none(), "no timer at the first poll");
        tokio::time::advance(SWEPT_EVERY).await;
        assert!(poll_once(&mut waiting).is_pending());
        assert!(waiting.timer.is_some(), "the second poll starts it");
        // Kept, never completed: the deadline, counted from the start (not
        // from the second poll), ends the wait.
        let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(
            matches!(waited, Ok(Err(PluginFault::TimedOut(d))) if d == 3 * SWEPT_EVERY),
            "{waited:?}"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= 3 * SWEPT_EVERY && elapsed <= 3 * SWEPT_EVERY + Duration::from_millis(2),
            "{elapsed:?}"
        );
        drop(pending);
    }

    #[tokio::test]
    async fn a_swept_wait_answered_before_the_second_poll_never_starts_a_timer() {
        let (pending, answer) = PendingReply::new();
        let mut waiting = Asked {
            answer: Answer::Awaited(answer),
        }
        .answer(Deadline::from_now(Duration::from_secs(30)).swept());
        assert!(poll_once(&mut waiting).is_pending());
        complete(pending, status::OK, b"4");
        let answered = poll_once(&mut waiting);
        assert!(waiting.timer.is_none());
        assert!(matches!(answered, Poll::Ready(Ok(ref a)) if a.body == b"4"));
    }

    #[tokio::test]
    async fn a_deadline_shorter_than_two_sweeps_keeps_its_own_timer() {
        let (_pending, answer) = PendingReply::new();
        let mut waiting = Asked {
            answer: Answer::Awaited(answer),
        }
        .answer(Deadline::from_now(SWEPT_EVERY).swept());
        assert!(poll_once(&mut waiting).is_pending());
        assert!(waiting.timer.is_some(), "started at the first poll");
        let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(
            matches!(waited, Ok(Err(PluginFault::TimedOut(_)))),
            "{waited:?}"
        );
    }
}
