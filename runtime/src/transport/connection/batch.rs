//! Frames read ahead of their handling, a burst at a time.
//!
//! A busy client's frames come in bursts, and handling them one by one
//! runs the whole of a frame's code, from decoding the WebSocket frame to
//! writing the reply, for each: more code than the CPU's instruction
//! cache holds, so every frame fetches it again. A batch decodes the
//! frames already received first, copying their text into one buffer
//! (tungstenite's read buffer is then free for the next frame, as when
//! frames are handled one by one), and the connection then handles them
//! from there. Each phase's code stays in the cache across the burst.
//!
//! A batch that is done is kept for the thread's next burst, its buffers
//! emptied but not freed: a burst then allocates nothing. Made afresh,
//! each burst's buffers grew from empty, a dozen reallocations and their
//! copies, 3.7% of an inline call's instructions (callgrind, `rpc`).

use std::cell::RefCell;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A batch stops reading ahead past this many bytes of text (the frame
/// that crosses it is taken whole).
const MAX_BATCH_BYTES: usize = 16 * 1024;

/// Most frames a batch holds.
const MAX_BATCH_FRAMES: usize = 64;

/// Longer frames are not copied: a batch ends before one, which is then
/// handled as tungstenite gave it.
pub(super) const MAX_COPIED_FRAME: usize = 4 * 1024;

/// Most spare batches a thread keeps (a connection holds its batch across
/// a wait, so a thread may have a few in use at once). Each holds at most
/// about 32 KiB of buffers.
const MAX_SPARE: usize = 4;

thread_local! {
    /// Batches this thread is done with, emptied, for its next bursts.
    /// Boxed as a connection holds them: the box is reused too.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Batch>>> = const { RefCell::new(Vec::new()) };
}

/// What the stream gave: a frame, its end, or an error.
pub(super) type Incoming = Option<Result<Message, WsError>>;

/// Text frames read ahead, and what the stream gave after them.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The frames' text, one after another.
    text: String,
    /// Where each frame's text ends in `text`.
    ends: Vec<usize>,
    /// How many frames were handed out.
    taken: usize,
    /// What came after the last text frame (anything else the stream
    /// gave), to be handled after them.
    after: Option<Incoming>,
}

/// The next thing a batch holds.
pub(super) enum Held<'b> {
    /// A text frame's text.
    Text(&'b str),
    /// What the stream gave after the text frames.
    After(Incoming),
    /// Nothing more.
    Empty,
}

impl Batch {
    /// Starts a batch with `first`'s text: a spare one of this thread's,
    /// if it has one.
    pub(super) fn starting_with(first: &str) -> Box<Batch> {
        // A thread whose spares are gone (it is exiting) makes a new one.
        let mut batch = SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        batch.push(first);
        batch
    }

    /// Lets go of a batch that is done: emptied, and kept as one of this
    /// thread's spares if it keeps fewer than [`MAX_SPARE`] (else freed).
    pub(super) fn recycle(mut self: Box<Batch>) {
        self.text.clear();
        self.ends.clear();
        self.taken = 0;
        self.after = None;
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < MAX_SPARE {
                spare.push(self);
            }
        });
    }

    /// Adds a text frame.
    fn push(&mut self, text: &str) {
        self.text.push_str(text);
        self.ends.push(self.text.len());
    }

    /// Takes frames from `read` (which gives `None` when nothing more is
    /// received) until it gives anything but a short text frame, or the
    /// batch is full.
    pub(super) fn fill(&mut self, mut read: impl FnMut() -> Option<Incoming>) {
        while self.ends.len() < MAX_BATCH_FRAMES && self.text.len() < MAX_BATCH_BYTES {
            match read() {
                Some(Some(Ok(Message::Text(text)))) if text.len() <= MAX_COPIED_FRAME => {
                    self.push(text.as_str());
                }
                Some(other) => {
                    self.after = Some(other);
                    return;
                }
                None => return,
            }
        }
    }

    /// The next frame, or what came after them.
    pub(super) fn next(&mut self) -> Held<'_> {
        if let Some(&end) = self.ends.get(self.taken) {
            let before = self.taken.checked_sub(1).and_then(|i| self.ends.get(i));
            let start = before.copied().unwrap_or(0);
            self.taken += 1;
            return match self.text.get(start..end) {
                Some(text) => Held::Text(text),
                None => Held::Empty,
            };
        }
        match self.after.take() {
            Some(after) => Held::After(after),
            None => Held::Empty,
        }
    }

    /// Whether it holds anything more.
    pub(super) fn has_more(&self) -> bool {
        self.taken < self.ends.len() || self.after.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;

    fn text(held: Held<'_>) -> Option<String> {
        match held {
            Held::Text(text) => Some(text.to_owned()),
            _ => None,
        }
    }

    #[test]
    fn frames_come_out_in_order_then_what_followed_them() {
        let mut batch = Batch::starting_with("a");
        let mut stream = vec![
            Some(Some(Ok(Message::text("bé")))),
            Some(Some(Ok(Message::Binary(vec![1].into())))),
            Some(Some(Ok(Message::text("never read")))),
        ]
        .into_iter();
        batch.fill(|| stream.next().flatten());
        assert_eq!(text(batch.next()).as_deref(), Some("a"));
        assert_eq!(text(batch.next()).as_deref(), Some("bé"));
        assert!(batch.has_more());
        assert!(matches!(
            batch.next(),
            Held::After(Some(Ok(Message::Binary(_))))
        ));
        assert!(!batch.has_more());
        assert!(matches!(batch.next(), Held::Empty));
        assert_eq!(stream.len(), 1, "reading stopped at the binary frame");
    }

    #[test]
    fn a_batch_let_go_of_is_reused_empty_by_the_next_burst() {
        let mut batch = Batch::starting_with("a");
        let mut stream = vec![
            Some(Some(Ok(Message::text("b".repeat(1000))))),
            Some(Some(Ok(Message::Binary(vec![1].into())))),
        ]
        .into_iter();
        batch.fill(|| stream.next().flatten());
        let (buffer, capacity) = (batch.text.as_ptr(), batch.text.capacity());
        batch.recycle();
        let mut batch = Batch::starting_with("c");
        assert_eq!(batch.text.as_ptr(), buffer, "the same buffer");
        assert_eq!(batch.text.capacity(), capacity);
        // Nothing of the burst before: only the new frame.
        assert_eq!(text(batch.next()).as_deref(), Some("c"));
        assert!(!batch.has_more());
        assert!(matches!(batch.next(), Held::Empty));
    }

    #[test]
    fn a_thread_keeps_few_spare_batches() {
        let batches: Vec<_> = (0..MAX_SPARE + 3)
            .map(|_| Batch::starting_with("a"))
            .collect();
        for batch in batches {
            batch.recycle();
        }
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), MAX_SPARE);
    }

    #[test]
    fn reading_stops_when_nothing_more_is_received() {
        let mut batch = Batch::starting_with("a");
        let mut stream = vec![Some(Some(Ok(Message::text("b")))), None].into_iter();
        batch.fill(|| stream.next().flatten());
        assert_eq!(text(batch.next()).as_deref(), Some("a"));
        assert_eq!(text(batch.next()).as_deref(), Some("b"));
        assert!(!batch.has_more());
    }

    #[test]
    fn a_batch_is_bounded_in_frames_and_bytes() {
        let mut batch = Batch::starting_with("");
        batch.fill(|| Some(Some(Ok(Message::text("x")))));
        assert_eq!(batch.ends.len(), MAX_BATCH_FRAMES);

        let big = "y".repeat(MAX_COPIED_FRAME);
        let mut batch = Batch::starting_with("");
        let mut reads = 0;
        batch.fill(|| {
            reads += 1;
            Some(Some(Ok(Message::text(big.clone()))))
        });
        assert_eq!(
            reads,
            MAX_BATCH_BYTES / MAX_COPIED_FRAME,
            "the frame that reaches the bound is the last"
        );
        assert_eq!(batch.ends.len(), reads + 1);
    }

    #[test]
    fn a_long_frame_ends_the_batch_uncopied() {
        let mut batch = Batch::starting_with("a");
        let long = "z".repeat(MAX_COPIED_FRAME + 1);
        let mut stream = vec![Some(Some(Ok(Message::text(long.clone()))))].into_iter();
        batch.fill(|| stream.next().flatten());
        assert!(text(batch.next()).is_some());
        match batch.next() {
            Held::After(Some(Ok(Message::Text(text)))) => assert_eq!(text.as_str(), long),
            _ => panic!("the long frame follows the batch as it came"),
        }
    }

    #[test]
    fn the_end_of_the_stream_is_kept_for_after_the_frames() {
        let mut batch = Batch::starting_with("a");
        let mut stream = vec![Some(None)].into_iter();
        batch.fill(|| stream.next().flatten());
        assert!(text(batch.next()).is_some());
        assert!(matches!(batch.next(), Held::After(None)));
    }
}
