//! Reading a connection's socket in large gulps without a large buffer per
//! connection.
//!
//! tungstenite reads through a buffer of its own, sized once per
//! connection and held for the connection's life, so its size is a trade:
//! a large one costs every idle connection that much memory, a small one
//! costs a busy connection one `recv` per few frames. [`ReadAhead`] takes
//! both sides: each `recv` goes into a scratch buffer shared by all the
//! connections a thread serves, and only the bytes the reader did not take
//! yet are kept for the connection, in a buffer freed as soon as they are
//! taken. A busy connection makes one `recv` per burst of frames; an idle
//! one holds nothing.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one `recv` reads: a burst of a few hundred small frames.
const SCRATCH_BYTES: usize = 32 * 1024;

thread_local! {
    /// Where `recv` writes before the bytes are handed out; one per thread.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// What a connection's stream can say of its read side without reading.
pub trait ReadState {
    /// Whether the last read found the socket empty and nothing it read
    /// is left over: reading again before the socket is ready again would
    /// find nothing (and its reader holds no whole frame, since a reader
    /// only reads when it has none).
    fn drained(&self) -> bool;
}

/// A stream whose reads go through a per-thread scratch buffer; see the
/// module documentation. Writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket but not taken yet (from `taken` on);
    /// empty, holding no allocation, once they all are.
    left: Vec<u8>,
    taken: usize,
    /// The last read from `inner` found nothing (see [`ReadState`]).
    drained: bool,
}

impl<S> ReadState for ReadAhead<S> {
    fn drained(&self) -> bool {
        // Set only by a read from `inner`, which happens only once every
        // leftover byte was taken.
        self.drained
    }
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            left: Vec::new(),
            taken: 0,
            drained: false,
        }
    }

    /// Hands out bytes left from an earlier read; frees them when all are
    /// taken.
    fn take_left(&mut self, buf: &mut ReadBuf<'_>) {
        let available = &self.left[self.taken..];
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.taken += n;
        if self.taken == self.left.len() {
            self.left = Vec::new();
            self.taken = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.left.len() {
            this.take_left(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH_BYTES {
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            this.drained = read.is_pending();
            return read;
        }
        let read = SCRATCH.with(|scratch| {
            // Never re-entered (the inner read does not read another
            // `ReadAhead`), but if it were, read straight into `buf`.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut gulp = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut gulp) {
                Poll::Ready(Ok(())) => {
                    let read = gulp.filled();
                    let n = read.len().min(buf.remaining());
                    buf.put_slice(&read[..n]);
                    if n < read.len() {
                        this.left = read[n..].to_vec();
                        this.taken = 0;
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        });
        this.drained = read.is_pending();
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_hold_nothing_after() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap_or_default();
        drop(client);
        let mut reader = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = reader.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(reader.left.capacity(), 0, "nothing held once all is read");
    }

    #[tokio::test]
    async fn drained_only_after_a_read_found_nothing_and_until_one_finds_something() {
        use futures_util::FutureExt;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(server);
        assert!(!reader.drained(), "nothing read yet: unknown");
        let mut chunk = [0u8; 4];
        assert!(reader.read(&mut chunk).now_or_never().is_none());
        assert!(reader.drained(), "the read found nothing");
        client.write_all(b"0123456789").await.unwrap_or_default();
        assert_eq!(reader.read(&mut chunk).await.unwrap_or(0), 4);
        assert!(!reader.drained(), "six bytes are left over");
        let mut rest = [0u8; 6];
        assert_eq!(reader.read(&mut rest).await.unwrap_or(0), 6);
        assert!(!reader.drained(), "the last read found bytes");
        assert!(reader.read(&mut chunk).now_or_never().is_none());
        assert!(reader.drained());
    }
}
