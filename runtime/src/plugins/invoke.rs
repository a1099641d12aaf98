//! Asking a plugin something and reading its answer: the one place that
//! reads the ABI's completion statuses.
//!
//! An action call, an auth hook and a join hook all go the same way: the
//! question is put to the plugin on a thread that may block (the action
//! pool, tokio's blocking pool, or, for an action marked inline, the
//! caller's own), the plugin completes its reply handle (now or later,
//! from any thread), and the caller awaits the answer under a deadline
//! (a connection's pool calls end in its inbox instead, see
//! [`super::inbox`]; their answers are read here all the same).
//! An inline call's handle is its thread's reply slot
//! ([`super::inline_reply`]), whose answer is taken as the plugin returns.
//! What comes back is the plugin's JSON body or a [`PluginFault`]; callers
//! turn a fault into their own refusal and never see a status code.

use super::inline_reply::{Ended, InlineCall};
use super::replies::{Completion, PendingReply, Pinned};
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
}

impl Deadline {
    /// `after` from now.
    pub(crate) fn from_now(after: Duration) -> Deadline {
        Deadline::starting(Instant::now(), after)
    }

    /// `after` from `from`, a moment the caller has read already (a call's
    /// start: no clock read of its own on the call path).
    pub(crate) fn starting(from: Instant, after: Duration) -> Deadline {
        Deadline { from, after }
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
    /// A question whose answer is to come through `answer`.
    pub(crate) fn awaited(answer: oneshot::Receiver<Completion>) -> Asked {
        Asked {
            answer: Answer::Awaited(answer),
        }
    }

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
            timer: None,
        }
    }
}

/// The wait for an answer under a deadline ([`Asked::answer`]).
#[derive(Debug)]
pub(crate) struct Answering {
    answer: Answer,
    deadline: Deadline,
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

/// Puts `question` to a plugin on tokio's blocking pool (for hooks, which
/// are rare and bounded by their callers' permits) and waits for its
/// answer until `deadline`. `question` hands the reply handle to the
/// plugin; whatever it owns (a permit, arguments) stays with the thread
/// until the plugin returns, even past the deadline.
pub(crate) async fn invoke(
    deadline: Deadline,
    question: impl FnOnce(PendingReply) + Send + 'static,
) -> Result<Answered, PluginFault> {
    let (pending, answer) = PendingReply::new();
    // The handle is watched through `answer`, not the task.
    drop(tokio::task::spawn_blocking(move || question(pending)));
    Asked::awaited(answer).answer(deadline).await
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
pub(crate) fn read(done: Completion) -> Result<Answered, PluginFault> {
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

    #[test]
    fn a_reply_for_an_inbox_ends_there_answered_or_dropped() {
        use crate::plugins::inbox::{CallKey, Inbox};
        let inbox = Arc::new(Inbox::default());
        let key = |number| CallKey { place: 0, number };
        complete(
            PendingReply::into_inbox(Arc::clone(&inbox), key(1)),
            status::OK,
            b"3",
        );
        drop(PendingReply::into_inbox(Arc::clone(&inbox), key(2)));
        let mut ended = std::collections::VecDeque::new();
        inbox.take_all(&Context::from_waker(std::task::Waker::noop()), &mut ended);
        let (first, answer) = ended.pop_front().expect("the completed call");
        assert_eq!(first, key(1));
        assert!(matches!(answer.map(read), Some(Ok(ref a)) if a.body == b"3"));
        let (second, answer) = ended.pop_front().expect("the dropped call");
        assert_eq!(second, key(2));
        assert!(
            answer.is_none(),
            "a reply dropped uncompleted ends unanswered"
        );
    }

    #[tokio::test]
    async fn an_unanswered_question_times_out_and_a_late_answer_arrives() {
        let (tx, rx) = std::sync::mpsc::channel();
        let waited = invoke(
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

        let answered = invoke(Deadline::from_now(Duration::from_secs(30)), |pending| {
            complete(pending, status::OK, b"1")
        })
        .await;
        assert_eq!(answered.ok().map(|a| a.body), Some(b"1".to_vec()));
    }
}
