//! The sim's side of one TCP connection, with the switch that a fault throws to end it the way a
//! broken engine or network does: a reset (RST) instead of an orderly close, or a status line cut
//! after its first bytes.
//!
//! hyper owns the connection and closes it by dropping its IO; a close with `SO_LINGER` set to zero
//! is what makes the kernel send RST instead of FIN and drop what is unsent, so the switch is read
//! when the socket is dropped — the only place that still owns it. A FIN needs no switch: hyper
//! drops the connection when a body fails, and an ordinary close sends FIN.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How the connection is to end.
#[derive(Default)]
pub(super) struct Switch(AtomicU8);

const ORDERLY: u8 = 0;
/// Close with RST.
const RESET: u8 = 1;
/// Write the first bytes of the next write, then fail the connection and close with RST.
const RESET_HEAD: u8 = 2;

/// The bytes of the status line `reset_head` lets out: `HTTP/1.1 2`, a promise of a success.
pub(super) const HEAD_PREFIX: usize = 10;

impl Switch {
    /// The connection ends with RST when it closes.
    pub fn reset(&self) {
        self.0.store(RESET, Relaxed);
    }

    /// The response head is cut after [`HEAD_PREFIX`] bytes, then the connection reset.
    pub fn reset_head(&self) {
        self.0.store(RESET_HEAD, Relaxed);
    }
}

/// A TCP connection whose close obeys a [`Switch`].
pub(super) struct Socket {
    stream: TcpStream,
    switch: Arc<Switch>,
}

impl Socket {
    pub fn new(stream: TcpStream) -> (Self, Arc<Switch>) {
        let switch = Arc::new(Switch::default());
        (Socket { stream, switch: Arc::clone(&switch) }, switch)
    }

    /// The `reset_head` write: the first bytes of `buf`, then an error that makes hyper drop the
    /// connection (and so close it with RST).
    fn poll_cut_head(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let head = &buf[..buf.len().min(HEAD_PREFIX)];
        ready!(Pin::new(&mut self.stream).poll_write(cx, head))?;
        self.switch.reset();
        Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset_head fault")))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.switch.0.load(Relaxed) != ORDERLY
            && let Err(e) = self.stream.set_zero_linger()
        {
            tracing::warn!("cannot set SO_LINGER 0 for a reset fault: {e}");
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.switch.0.load(Relaxed) == RESET_HEAD {
            return self.poll_cut_head(cx, buf);
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.switch.0.load(Relaxed) == RESET_HEAD {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return self.poll_cut_head(cx, first);
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
