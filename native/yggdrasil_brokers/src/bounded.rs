//! A broker's bytes are input we do not control, and our client crates size
//! buffers, allocations and recursion from them: a declared length of 2^31
//! or a table nested 10,000 deep can abort the process (and the VM with it).
//! `Bounded` wraps a connection's stream and shows every byte the peer sends
//! to a broker's [`Scanner`] before the client crate sees it; a scanner
//! that finds a value beyond one of our caps fails the read, so the crate
//! sees an I/O error, the session ends and the shared code reconnects with
//! backoff, logging the reason.
//!
//! A [`Cut`] ends the stream from outside: a connection attempt given up
//! while a crate's own thread still drives its socket (lapin) cuts it, so
//! that thread fails its next read or write, closes the socket and ends.
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Looks at a peer's bytes in the order they arrive.
pub(crate) trait Scanner: Send + Unpin + 'static {
    /// `Err(reason)` when `bytes` (the next ones of the stream) break a cap.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), String>;
}

pub(crate) struct Bounded<S, P> {
    inner: S,
    scanner: P,
    /// The first cap broken: every later read fails with it too.
    broken: Option<String>,
    cut: Arc<Cut>,
}

impl<S, P: Scanner> Bounded<S, P> {
    pub(crate) fn new(inner: S, scanner: P) -> Self {
        Bounded {
            inner,
            scanner,
            broken: None,
            cut: Arc::new(Cut::default()),
        }
    }

    /// A handle that ends this stream when cut.
    pub(crate) fn cut_handle(&self) -> Arc<Cut> {
        self.cut.clone()
    }
}

/// Ends a [`Bounded`] stream from outside, waking whoever waits on it.
#[derive(Default)]
pub(crate) struct Cut {
    done: AtomicBool,
    /// The wakers of the last pending read and write.
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Cut {
    pub(crate) fn cut(&self) {
        self.done.store(true, Ordering::SeqCst);
        let wakers = match self.wakers.lock() {
            Ok(mut wakers) => std::mem::take(&mut *wakers),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    /// `Err` once cut; otherwise remembers who to wake (0: read, 1: write).
    fn check(&self, slot: usize, cx: &Context<'_>) -> io::Result<()> {
        if let Ok(mut wakers) = self.wakers.lock() {
            wakers[slot] = Some(cx.waker().clone());
        }
        if self.done.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection attempt given up",
            ));
        }
        Ok(())
    }
}

/// Cuts the stream when dropped, unless disarmed: tie it to a connection
/// attempt, disarm it once the attempt succeeded.
pub(crate) struct CutOnDrop(Option<Arc<Cut>>);

impl CutOnDrop {
    pub(crate) fn new(cut: Arc<Cut>) -> Self {
        CutOnDrop(Some(cut))
    }

    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(cut) = self.0.take() {
            cut.cut();
        }
    }
}

impl<S: AsyncRead + Unpin, P: Scanner> AsyncRead for Bounded<S, P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.cut.check(0, cx)?;
        if let Some(reason) = &this.broken {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                reason.clone(),
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(reason) = this.scanner.scan(&buf.filled()[before..]) {
                    buf.set_filled(before);
                    this.broken = Some(reason.clone());
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, reason)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin, P: Scanner> AsyncWrite for Bounded<S, P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.cut.check(1, cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.cut.check(1, cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.cut.check(1, cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A big-endian length or count field of `N` bytes, collected across reads.
pub(crate) fn be_u64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b))
}
