//! A server connection's WebSocket, driven by the one task that serves it.
//!
//! tungstenite speaks the protocol over a blocking `Read + Write`. To run
//! it on an async socket, each of its reads and writes here polls the
//! socket once, with the waker of the task that last polled the
//! connection; "would block" is that poll's `Pending`, and the socket
//! wakes the task when it is ready.
//!
//! tokio-tungstenite does the same for a stream that may be split between
//! a reading and a writing task, so every poll registers the caller's
//! waker in two of four atomic slots (a read may have to write, a pong,
//! and a write may have to read): about 2.7 registrations per call
//! served, two locked instructions each, and a waker clone and drop
//! whenever a poll's waker differs from the last. A connection here is
//! one task, so one waker does, kept while the task's waker is the same
//! (a pointer comparison): no atomic operation per poll. It also reads,
//! and checks that the sink takes a frame, "now", with that waker and no
//! context, for the frames received already (see `connection::batch`).
//! Measured against tokio-tungstenite's stream (callgrind, `rpc`, 50
//! connections x 8 in flight): 6,424 -> 6,095 instructions per call.

use futures_util::{Sink, Stream};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// The async socket as tungstenite's blocking stream (see the module
/// documentation).
#[derive(Debug)]
struct Bridge<S> {
    socket: S,
    /// The waker of the task that last polled the connection.
    waker: Waker,
}

impl<S> Bridge<S> {
    /// Polls `operation` on the socket once: `Pending` is "would block".
    fn poll_once<T>(
        &mut self,
        operation: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T>
    where
        S: Unpin,
    {
        let mut cx = Context::from_waker(&self.waker);
        match operation(Pin::new(&mut self.socket), &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncRead + Unpin> Read for Bridge<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        self.poll_once(|socket, cx| socket.poll_read(cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl<S: AsyncWrite + Unpin> Write for Bridge<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll_once(|socket, cx| socket.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll_once(|socket, cx| socket.poll_flush(cx))
    }
}

/// A server's WebSocket over `S`, as a [`Stream`] of messages and a
/// [`Sink`] for them, polled by one task (see the module documentation).
#[derive(Debug)]
pub struct WebSocket<S> {
    ws: tungstenite::WebSocket<Bridge<S>>,
    /// The sink takes a message without waiting: nothing is stuck in the
    /// write buffer for want of room in the socket.
    ready: bool,
    /// The stream ended (closed, or failed): it gives nothing more.
    ended: bool,
    /// A close was started and is being flushed.
    closing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// The server's side of a connection whose upgrade was answered.
    pub fn server(socket: S, config: WebSocketConfig) -> WebSocket<S> {
        let bridge = Bridge {
            socket,
            waker: Waker::noop().clone(),
        };
        WebSocket {
            ws: tungstenite::WebSocket::from_raw_socket(bridge, Role::Server, Some(config)),
            ready: true,
            ended: false,
            closing: false,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.ws.get_ref().socket
    }

    /// Keeps `cx`'s waker for the socket's next polls (a clone only when
    /// it is another task's).
    fn wake_with(&mut self, cx: &Context<'_>) {
        let kept = &mut self.ws.get_mut().waker;
        if !kept.will_wake(cx.waker()) {
            kept.clone_from(cx.waker());
        }
    }

    /// The next message if one was received already (`None` when reading
    /// would wait), read with the waker of the connection's last poll.
    pub fn next_now(&mut self) -> Option<Option<Result<Message, WsError>>> {
        if self.ended {
            return Some(None);
        }
        match self.ws.read() {
            Ok(message) => Some(Some(Ok(message))),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(WsError::AlreadyClosed | WsError::ConnectionClosed) => {
                self.ended = true;
                Some(None)
            }
            Err(e) => {
                self.ended = true;
                Some(Some(Err(e)))
            }
        }
    }

    /// Whether the sink takes a message now, without waiting; a sink that
    /// is not tries to flush what holds it up, with the waker of the
    /// connection's last poll.
    pub fn ready_now(&mut self) -> bool {
        self.ready || matches!(self.flush_now(), Poll::Ready(Ok(())))
    }

    /// Flushes the write buffer as far as the socket takes it now.
    fn flush_now(&mut self) -> Poll<Result<(), WsError>> {
        match self.ws.flush() {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            flushed => {
                self.ready = true;
                Poll::Ready(flushed)
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.wake_with(cx);
        match this.next_now() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.ready {
            return Poll::Ready(Ok(()));
        }
        this.wake_with(cx);
        this.flush_now()
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        match this.ws.write(message) {
            // Taken into the write buffer, which the socket would not
            // take whole: the next poll_ready flushes it first.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                this.ready = false;
                Ok(())
            }
            other => {
                this.ready = true;
                other
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        this.wake_with(cx);
        this.flush_now().map(|flushed| match flushed {
            // A close that completed: flushed, not an error.
            Err(WsError::ConnectionClosed) => Ok(()),
            other => other,
        })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        this.ready = true;
        this.wake_with(cx);
        let closed = if this.closing {
            this.ws.flush()
        } else {
            this.ws.close(None)
        };
        match closed {
            Ok(()) | Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                this.closing = true;
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio_tungstenite::WebSocketStream;

    /// A server end over an in-memory pipe of `capacity` bytes each way,
    /// and a client speaking to it through tokio-tungstenite.
    async fn pair(capacity: usize) -> (WebSocket<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (client, server) = tokio::io::duplex(capacity);
        let server = WebSocket::server(server, WebSocketConfig::default());
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (server, client)
    }

    fn text(message: Option<Option<Result<Message, WsError>>>) -> Option<String> {
        match message {
            Some(Some(Ok(Message::Text(text)))) => Some(text.as_str().to_owned()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn frames_received_already_are_read_now_and_a_later_one_wakes_the_reader() {
        let (mut server, mut client) = pair(64 * 1024).await;
        assert!(server.next_now().is_none(), "nothing received yet");
        client.send(Message::text("one")).await.unwrap();
        client.send(Message::text("two")).await.unwrap();
        assert_eq!(text(server.next_now()).as_deref(), Some("one"));
        assert_eq!(text(server.next_now()).as_deref(), Some("two"));
        assert!(server.next_now().is_none(), "both taken");
        // A reader waiting on the socket is woken by the next frame.
        let reader =
            tokio::spawn(async move { server.next().await.map(|m| m.map(|m| m.into_text())) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.send(Message::text("three")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the waiting reader was woken")
            .unwrap();
        assert_eq!(got.unwrap().unwrap().unwrap().as_str(), "three");
    }

    #[tokio::test]
    async fn a_full_socket_holds_the_sink_until_the_peer_reads_then_wakes_the_writer() {
        let (mut server, client) = pair(1024).await;
        let big = "x".repeat(64 * 1024);
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            server.send(Message::text(big)).await.unwrap();
            assert!(server.ready_now(), "flushed: the sink takes frames again");
            server
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !writer.is_finished(),
            "64 KiB cannot pass a 1 KiB pipe unread"
        );
        // The client's raw bytes: the frame's header (two bytes and a
        // 64-bit length; a server's frames are not masked), then the text.
        let mut raw = client.into_inner();
        let mut got = vec![0u8; 2 + 8 + expected.len()];
        tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut got))
            .await
            .expect("the stalled writer was woken as the pipe drained")
            .unwrap();
        assert_eq!(&got[10..], expected.as_bytes());
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the send completed")
            .unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_ends_the_stream_for_good() {
        let (mut server, mut client) = pair(64 * 1024).await;
        client.close(None).await.unwrap();
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
        // The close reply goes out with the next read; then the end.
        assert!(server.next().await.is_none());
        assert!(server.next().await.is_none(), "fused");
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
    }
}
