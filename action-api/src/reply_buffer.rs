//! [`ReplyBuffer`]: where a reply is serialized before the host copies it.
//! A short reply stays on the stack, so answering a call allocates nothing
//! in the plugin; a longer one moves to the heap once it outgrows it.
//!
//! Not a thread-local buffer kept between calls: a `thread_local!` with a
//! destructor in a plugin pins its image in memory for as long as the
//! thread lives, so a hot reload could never unmap the old build.

use std::io;
use std::mem::MaybeUninit;

/// Bytes a reply may take before it moves to the heap: most results
/// (an id, a flag, a small record) fit.
const ON_STACK: usize = 512;

/// A serialization target that starts on the stack.
pub(crate) struct ReplyBuffer {
    /// Not zeroed first: only the `len` bytes written are ever read.
    stack: [MaybeUninit<u8>; ON_STACK],
    /// Bytes of `stack` written (while `heap` is `None`).
    len: usize,
    /// Everything written, once it outgrew `stack`.
    heap: Option<Vec<u8>>,
}

impl ReplyBuffer {
    /// An empty buffer.
    pub(crate) fn new() -> ReplyBuffer {
        ReplyBuffer {
            stack: [const { MaybeUninit::uninit() }; ON_STACK],
            len: 0,
            heap: None,
        }
    }

    /// What has been written.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.heap {
            Some(heap) => heap,
            None => self.on_stack(),
        }
    }

    /// The bytes written on the stack.
    fn on_stack(&self) -> &[u8] {
        let written = self.stack.get(..self.len).unwrap_or_default();
        // SAFETY: the first `len` bytes of `stack` have been written
        // (`write_all` raises `len` only over bytes it has copied in), and
        // `MaybeUninit<u8>` has `u8`'s layout.
        unsafe { std::slice::from_raw_parts(written.as_ptr().cast::<u8>(), written.len()) }
    }

    /// Writes `bytes` on the heap: the stack is full, or was.
    #[cold]
    #[inline(never)]
    fn write_to_heap(&mut self, bytes: &[u8]) {
        match &mut self.heap {
            Some(heap) => heap.extend_from_slice(bytes),
            None => {
                let written = self.on_stack();
                let mut heap = Vec::with_capacity((written.len() + bytes.len()).max(2 * ON_STACK));
                heap.extend_from_slice(written);
                heap.extend_from_slice(bytes);
                self.heap = Some(heap);
            }
        }
    }
}

impl io::Write for ReplyBuffer {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    /// Inlined into the serializer, as `Vec`'s is: it writes a reply a
    /// few bytes at a time.
    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len();
        match self.stack.get_mut(self.len..end) {
            Some(room) if self.heap.is_none() => {
                // SAFETY: `room` is `bytes.len()` slots (the range just
                // taken), `bytes` cannot overlap it (`self` is borrowed
                // mutably), and `MaybeUninit<u8>` has `u8`'s layout.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        room.as_mut_ptr().cast::<u8>(),
                        bytes.len(),
                    );
                }
                self.len = end;
            }
            _ => self.write_to_heap(bytes),
        }
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_short_reply_stays_on_the_stack() {
        let mut buffer = ReplyBuffer::new();
        serde_json::to_writer(&mut buffer, &serde_json::json!({"ok": true, "n": 7}))
            .unwrap_or_else(|e| panic!("serialized: {e}"));
        assert!(buffer.heap.is_none());
        assert_eq!(buffer.as_bytes(), br#"{"n":7,"ok":true}"#);
    }

    #[test]
    fn a_long_reply_moves_to_the_heap_whole_and_in_order() {
        let mut buffer = ReplyBuffer::new();
        let mut expected = Vec::new();
        for round in 0..300u32 {
            let piece = format!("{round},");
            buffer
                .write_all(piece.as_bytes())
                .unwrap_or_else(|e| panic!("written: {e}"));
            expected.extend_from_slice(piece.as_bytes());
        }
        assert!(expected.len() > ON_STACK, "the test outgrows the stack");
        assert!(buffer.heap.is_some());
        assert_eq!(buffer.as_bytes(), expected.as_slice());
    }

    #[test]
    fn a_write_that_exactly_fills_the_stack_stays_there() {
        let mut buffer = ReplyBuffer::new();
        buffer
            .write_all(&[b'x'; ON_STACK])
            .unwrap_or_else(|e| panic!("written: {e}"));
        assert!(buffer.heap.is_none());
        assert_eq!(buffer.as_bytes().len(), ON_STACK);
        buffer
            .write_all(b"y")
            .unwrap_or_else(|e| panic!("written: {e}"));
        assert!(buffer.heap.is_some());
        assert_eq!(buffer.as_bytes().len(), ON_STACK + 1);
        assert_eq!(buffer.as_bytes().last(), Some(&b'y'));
    }
}
