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

    /// After an `Err`: how many of the bytes scanned last come before the
    /// one that broke the cap. The crate still gets those, so that what the
    /// peer sent well before it (a confirmation) is not lost with it; none
    /// of them completes the value that broke the cap.
    fn good(&self) -> usize;
}

/// Runs `scan_from`, a scan that takes bytes from the front of its slice
/// and stops `past` bytes after the one that broke a cap (0: at it, 1: just
/// after it); an `Err` carries how many bytes came before that one
/// ([`Scanner::good`]).
pub(crate) fn scan_front(
    bytes: &[u8],
    past: usize,
    scan_from: impl FnOnce(&mut &[u8]) -> Result<(), String>,
) -> Result<(), (usize, String)> {
    let mut rest = bytes;
    scan_from(&mut rest).map_err(|reason| ((bytes.len() - rest.len()).saturating_sub(past), reason))
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
                let read = buf.filled().len() - before;
                if let Err(reason) = this.scanner.scan(&buf.filled()[before..]) {
                    let good = this.scanner.good().min(read);
                    buf.set_filled(before + good);
                    this.broken = Some(reason.clone());
                    if good == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            reason,
                        )));
                    }
                    // The next read fails with `broken`.
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Refuses the byte `!`, wherever it comes.
    #[derive(Default)]
    struct NoBang {
        good: usize,
    }

    impl Scanner for NoBang {
        fn scan(&mut self, bytes: &[u8]) -> Result<(), String> {
            match bytes.iter().position(|&b| b == b'!') {
                Some(at) => {
                    self.good = at;
                    Err("a bang".to_owned())
                }
                None => Ok(()),
            }
        }

        fn good(&self) -> usize {
            self.good
        }
    }

    /// What came before the byte that broke a cap still reaches the reader,
    /// in the same read; the read after it fails, and so does every later one.
    #[tokio::test]
    async fn the_bytes_before_a_broken_cap_are_read_then_the_error() {
        let (mut peer, ours) = tokio::io::duplex(64);
        peer.write_all(b"confirmed!and more").await.unwrap();
        let mut bounded = Bounded::new(ours, NoBang::default());
        let mut buf = [0u8; 64];
        let n = bounded.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"confirmed");
        for _ in 0..2 {
            let error = bounded.read(&mut buf).await.unwrap_err();
            assert_eq!(error.to_string(), "a bang");
        }
        // A cap broken by the first byte read fails that read itself.
        let (mut peer, ours) = tokio::io::duplex(64);
        peer.write_all(b"!").await.unwrap();
        let mut bounded = Bounded::new(ours, NoBang::default());
        assert!(bounded.read(&mut buf).await.is_err());
    }
}
