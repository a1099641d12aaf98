//! Asking a plugin something and reading its answer: the one place that
//! reads the ABI's completion statuses.
//!
//! An action call, an auth hook and a join hook all go the same way: the
//! question is put to the plugin on a thread that may block (the action
//! pool, tokio's blocking pool, or, for an action marked inline, the
//! caller's own), the plugin completes a [`PendingReply`] (now or later,
//! from any thread), and the caller awaits the answer under a deadline.
//! What comes back is the plugin's JSON body or a [`PluginFault`]; callers
//! turn a fault into their own refusal and never see a status code.

use super::replies::{Completion, PendingReply};
use crate::action_threads::ActionThreads;
use action_api::abi::status;
use std::time::Duration;
use tokio::sync::oneshot;

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

/// A question put to a plugin, whose answer may not have come yet.
/// A plugin's successful answer.
#[derive(Debug)]
pub(crate) struct Answered {
    /// Its JSON body.
    pub(crate) body: Vec<u8>,
    /// Whether the plugin's serializer wrote it (`complete_serialized`):
    /// then it is well-formed JSON, and need not be parsed again.
    pub(crate) serialized: bool,
}

#[derive(Debug)]
pub(crate) struct Asked {
    answer: oneshot::Receiver<Completion>,
}

impl Asked {
    /// The answer, if the plugin has already given it (an inline action
    /// usually has by the time `ask_here` returns).
    pub(crate) fn now(&mut self) -> Option<Result<Answered, PluginFault>> {
        match self.answer.try_recv() {
            Ok(done) => Some(read(done)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(PluginFault::NotAsked)),
        }
    }

    /// Waits for the answer for at most `deadline`.
    pub(crate) async fn answer(self, deadline: Duration) -> Result<Answered, PluginFault> {
        match tokio::time::timeout(deadline, self.answer).await {
            Ok(Ok(done)) => read(done),
            Ok(Err(_)) => Err(PluginFault::NotAsked),
            Err(_) => Err(PluginFault::TimedOut(deadline)),
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

/// Puts `question` to a plugin on `thread` and waits for its answer for
/// at most `deadline`. `question` hands the reply handle to the plugin;
/// whatever it owns (call slots, arguments) stays with the thread until
/// the plugin returns, even past the deadline.
pub(crate) async fn invoke(
    thread: Thread<'_>,
    deadline: Duration,
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
    Asked { answer }.answer(deadline).await
}

/// Puts `question` to a plugin right here, on the caller's thread (for an
/// action its author marked inline: it never blocks).
pub(crate) fn ask_here(question: impl FnOnce(PendingReply)) -> Asked {
    let (pending, answer) = PendingReply::new();
    question(pending);
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

    /// Completes `pending` as a plugin would, through its handle.
    fn complete(pending: PendingReply, status: u32, body: &[u8]) {
        let handle = pending.into_handle();
        // SAFETY: the handle was just made by `into_handle` and is
        // completed once; the body outlives the call.
        unsafe { super::super::replies::complete_call(handle, status, ByteView::of(body)) };
    }

    fn completing(status: u32, body: &[u8]) -> Asked {
        ask_here(|pending| complete(pending, status, body))
    }

    #[test]
    fn each_status_reads_as_its_answer_or_fault() {
        assert_eq!(
            completing(status::OK, b"{\"a\":1}")
                .now()
                .map(|a| a.ok().map(|a| (a.body, a.serialized))),
            Some(Some((b"{\"a\":1}".to_vec(), false)))
        );
        let serialized = ask_here(|pending| {
            let handle = pending.into_handle();
            // SAFETY: as in `complete`.
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
        let answered = ask_here(|pending| complete(pending.leaving_room(5), status::OK, b"[1]"))
            .now()
            .and_then(Result::ok);
        let body = answered.map(|a| a.body).unwrap_or_default();
        assert_eq!(body, b"     [1]".to_vec());
        assert_eq!(body.capacity(), 5 + 3 + 1, "one byte to spare, no more");
        let refused = ask_here(|pending| {
            complete(pending.leaving_room(5), status::ACTION_ERROR, b"{}");
        })
        .now()
        .and_then(Result::err);
        assert!(matches!(refused, Some(PluginFault::Refused(body)) if body == b"{}"));
    }

    #[test]
    fn a_reply_dropped_unanswered_reads_as_not_asked() {
        let mut asked = ask_here(drop);
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
            Duration::from_millis(20),
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

        let answered = invoke(Thread::Blocking, Duration::from_secs(30), |pending| {
            complete(pending, status::OK, b"1")
        })
        .await;
        assert_eq!(answered.ok().map(|a| a.body), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn a_question_on_the_action_pool_is_answered() {
        let threads = ActionThreads::new(2);
        let answered = invoke(
            Thread::Actions(&threads),
            Duration::from_secs(30),
            |pending| complete(pending, status::OK, b"2"),
        )
        .await;
        assert_eq!(answered.ok().map(|a| a.body), Some(b"2".to_vec()));
    }
}
