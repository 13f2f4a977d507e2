//! What an AMQP server may size, checked before lapin parses it.
//!
//! lapin trusts the server in three ways that can take the VM down:
//! - its receive and send buffers are 32 × the negotiated `frame_max`, and
//!   a Tune of 0 ("no limit") makes that 32 × 4 GiB: the allocation fails
//!   and the process aborts. We ask for [`FRAME_MAX`] in the URI, so the
//!   negotiation (the lower of both, ours when the server says 0) never
//!   goes above it; [`CHANNEL_MAX`] likewise.
//! - it parses any frame that fits in that buffer (up to 32 × frame_max)
//!   before checking its size, and amq-protocol's parser recurses once per
//!   nested field table or array, about 1.4 KB of stack each: ~1,500 levels
//!   (7.5 KB of bytes) overflow the 2 MiB stack of lapin's I/O thread. The
//!   [`AmqpFrames`] scanner refuses a frame above [`FRAME_MAX`] and a method
//!   or content header frame that may nest deeper than [`MAX_NESTING`].
//! - it appends a message's body frames until the declared body size is
//!   reached, so a content header declaring 2^63 bytes lets a server grow
//!   our memory for as long as it sends: refused above [`MAX_BODY`].
use std::collections::BinaryHeap;
use std::cmp::Reverse;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_compat::Compat;
use async_rs::traits::Reactor;
use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};

use crate::bounded::{be_u64, Bounded, Scanner};
use crate::tls;

/// The largest frame we accept (header and end byte included), and the
/// `frame_max` we ask for: RabbitMQ's default. lapin keeps two buffers of 32
/// frames, 4 MiB each; messages larger than a frame come in several.
pub(super) const FRAME_MAX: u32 = 128 * 1024;

/// The channels we ask for: RabbitMQ's default (one per subscribed topic
/// and per exchange published to). Sizes nothing in lapin, bounded anyway.
pub(super) const CHANNEL_MAX: u16 = 2047;

/// The deepest nesting of field tables and arrays a method or content
/// header frame may have: real ones nest 2 or 3 deep (server capabilities,
/// user headers); 64 levels take ~90 KB of lapin's 2 MiB stack.
const MAX_NESTING: usize = 64;

/// The largest message body a content header may declare: RabbitMQ 3's
/// default `max_message_size` (its hard limit is 512 MiB).
const MAX_BODY: u64 = 128 * 1024 * 1024;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
/// Type byte, channel (2), payload size (4); then the payload and 0xCE.
const HEADER_LEN: usize = 7;

/// The stream lapin reads: ours, scanned.
pub(super) type Stream = Compat<Bounded<tls::Stream, AmqpFrames>>;

pub(super) fn stream(inner: tls::Stream) -> Bounded<tls::Stream, AmqpFrames> {
    Bounded::new(inner, AmqpFrames::default())
}

/// Follows the frames of a server's byte stream.
#[derive(Default)]
pub(crate) struct AmqpFrames {
    header: [u8; HEADER_LEN],
    got: usize,
    /// Payload bytes still to come of the current frame (then its end byte).
    left: u64,
    in_payload: bool,
    /// Its end byte is next.
    at_end: bool,
    /// A method or header frame's payload, looked at once complete.
    payload: Vec<u8>,
    keep: bool,
    /// Bytes of a protocol header still to skip ("AMQP" + version: the
    /// server refusing our version, before it closes).
    skip: usize,
    started: bool,
}

impl Scanner for AmqpFrames {
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.at_end {
                self.at_end = false;
                bytes = &bytes[1..];
            } else if self.in_payload {
                let n = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
                if self.keep {
                    self.payload.extend_from_slice(&bytes[..n]);
                }
                self.left -= n as u64;
                bytes = &bytes[n..];
                if self.left == 0 {
                    self.finish_payload()?;
                }
            } else {
                let n = (HEADER_LEN - self.got).min(bytes.len());
                self.header[self.got..self.got + n].copy_from_slice(&bytes[..n]);
                self.got += n;
                bytes = &bytes[n..];
                if self.got == HEADER_LEN {
                    self.got = 0;
                    self.start_frame()?;
                }
            }
        }
        Ok(())
    }
}

impl AmqpFrames {
    fn start_frame(&mut self) -> Result<(), String> {
        if !self.started && self.header[0] == b'A' {
            // "AMQP" and four version bytes: one more to skip.
            self.skip = 8 - HEADER_LEN;
            return Ok(());
        }
        self.started = true;
        let size = be_u64(&self.header[3..7]);
        if size + 8 > u64::from(FRAME_MAX) {
            return Err(format!(
                "the server sent a frame of {} bytes, above the {FRAME_MAX} we allow",
                size + 8
            ));
        }
        self.keep = matches!(self.header[0], FRAME_METHOD | FRAME_HEADER);
        self.payload.clear();
        self.left = size;
        self.in_payload = true;
        if size == 0 {
            self.finish_payload()?;
        }
        Ok(())
    }

    fn finish_payload(&mut self) -> Result<(), String> {
        self.in_payload = false;
        self.at_end = true;
        if !self.keep {
            return Ok(());
        }
        if self.header[0] == FRAME_HEADER && self.payload.len() >= 12 {
            let body = be_u64(&self.payload[4..12]);
            if body > MAX_BODY {
                return Err(format!(
                    "the server announced a message of {body} bytes, above the {MAX_BODY} we allow"
                ));
            }
        }
        if !nests_at_most(&self.payload, MAX_NESTING) {
            return Err(format!(
                "the server sent field tables nested deeper than the {MAX_NESTING} levels we allow"
            ));
        }
        Ok(())
    }
}

/// Whether no field table or array in `payload` can be nested more than
/// `limit` deep, wherever it starts: every 'F' or 'A' byte followed by a
/// length that fits is taken for a container, and at no byte may more than
/// `limit` of them be open. An over-estimate (real containers are among
/// those), so it needs no knowledge of where a method's tables are.
fn nests_at_most(payload: &[u8], limit: usize) -> bool {
    let mut open: BinaryHeap<Reverse<usize>> = BinaryHeap::new();
    for (at, tag) in payload.iter().enumerate() {
        while open.peek().is_some_and(|Reverse(end)| *end <= at) {
            open.pop();
        }
        if !matches!(tag, b'F' | b'A') {
            continue;
        }
        let Some(length) = payload.get(at + 1..at + 5) else {
            continue;
        };
        let end = usize::try_from(be_u64(length))
            .ok()
            .and_then(|l| l.checked_add(at + 5));
        if let Some(end) = end.filter(|end| *end <= payload.len()) {
            open.push(Reverse(end));
            if open.len() > limit {
                return false;
            }
        }
    }
    true
}

/// tokio as lapin's default runtime has it, but with our scanned stream as
/// its stream type (the only way to hand lapin a stream of our own type).
#[derive(Clone, Debug)]
pub(super) struct ScannedReactor(Tokio);

pub(super) type Kit = RuntimeParts<Tokio, ScannedReactor>;

/// The runtime lapin runs on: ours (the current tokio runtime), like
/// `lapin::runtime::default_runtime()`.
pub(super) fn runtime() -> Runtime<Kit> {
    Runtime::new(RuntimeParts::new(
        Tokio::current(),
        ScannedReactor(Tokio::current()),
    ))
}

impl Reactor for ScannedReactor {
    type TcpStream = Stream;
    type Sleep = <Tokio as Reactor>::Sleep;

    // lapin never registers raw handles: we connect and hand it the stream.
    #[allow(refining_impl_trait)]
    fn register<H: io::Read + io::Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<Stream> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "yggdrasil hands lapin its connected stream",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(
        &self,
        dur: Duration,
    ) -> impl futures_util::Stream<Item = std::time::Instant> + Send + 'static {
        self.0.interval(dur)
    }

    // Never called: the connector we give lapin returns our own stream.
    #[allow(refining_impl_trait)]
    fn tcp_connect_addr(
        &self,
        _addr: SocketAddr,
    ) -> std::future::Ready<io::Result<Stream>> {
        std::future::ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "yggdrasil connects itself",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 1];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        f
    }

    /// A field array nested `depth` deep.
    fn nested(depth: usize) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        for _ in 0..depth {
            let mut outer = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            outer.push(b'A');
            outer.extend_from_slice(&body);
            body = outer;
        }
        let mut value = vec![b'A'];
        value.extend_from_slice(&body);
        value
    }

    #[test]
    fn frames_are_followed_across_reads() {
        let mut stream = frame(FRAME_METHOD, &nested(10));
        stream.extend(frame(3, &[b'F'; 5000]));
        stream.extend(frame(8, &[]));
        for split in [1, 3, 7, 100] {
            let mut scanner = AmqpFrames::default();
            for chunk in stream.chunks(split) {
                assert_eq!(scanner.scan(chunk), Ok(()));
            }
        }
    }

    #[test]
    fn caps_are_enforced() {
        let mut big = vec![FRAME_METHOD, 0, 0];
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(AmqpFrames::default().scan(&big).is_err());
        let deep = frame(FRAME_METHOD, &nested(MAX_NESTING + 1));
        assert!(AmqpFrames::default().scan(&deep).is_err());
        let ok = frame(FRAME_METHOD, &nested(MAX_NESTING - 1));
        assert_eq!(AmqpFrames::default().scan(&ok), Ok(()));
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        assert!(AmqpFrames::default()
            .scan(&frame(FRAME_HEADER, &header))
            .is_err());
        // A server refusing our protocol version answers with its own header.
        assert_eq!(AmqpFrames::default().scan(b"AMQP\x00\x00\x09\x01"), Ok(()));
    }
}
