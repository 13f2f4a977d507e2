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
//!   or content header frame that nests deeper than [`MAX_NESTING`]: a
//!   content header's tables (a publisher's bytes) are followed as lapin
//!   parses them; a method's are over-estimated (any byte may start one),
//!   except in the deliveries, which have none.
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

use crate::bounded::{be_u64, scan_front, Bounded, Scanner};
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
    /// See [`Scanner::good`].
    good: usize,
}

impl Scanner for AmqpFrames {
    fn scan(&mut self, bytes: &[u8]) -> Result<(), String> {
        // It stops just after the byte that completed a bad frame header or payload.
        scan_front(bytes, 1, |rest| self.scan_from(rest)).map_err(|(good, reason)| {
            self.good = good;
            reason
        })
    }

    fn good(&self) -> usize {
        self.good
    }
}

impl AmqpFrames {
    /// Scans from the front of `bytes`, advancing it past what it took.
    fn scan_from(&mut self, bytes: &mut &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let current = *bytes;
            if self.skip > 0 {
                let n = self.skip.min(current.len());
                self.skip -= n;
                *bytes = &current[n..];
            } else if self.at_end {
                self.at_end = false;
                *bytes = &current[1..];
            } else if self.in_payload {
                let n = usize::try_from(self.left).map_or(current.len(), |l| l.min(current.len()));
                if self.keep {
                    self.payload.extend_from_slice(&current[..n]);
                }
                self.left -= n as u64;
                *bytes = &current[n..];
                if self.left == 0 {
                    self.finish_payload()?;
                }
            } else {
                let n = (HEADER_LEN - self.got).min(current.len());
                self.header[self.got..self.got + n].copy_from_slice(&current[..n]);
                self.got += n;
                *bytes = &current[n..];
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
        let within = match self.header[0] {
            // Their tables hold a publisher's bytes: followed as lapin will.
            FRAME_HEADER => header_nests_at_most(&self.payload, MAX_NESTING),
            // No tables, but a publisher's routing key and exchange name.
            FRAME_METHOD if carries_no_table(&self.payload) => true,
            _ => nests_at_most(&self.payload, MAX_NESTING),
        };
        if !within {
            return Err(format!(
                "the server sent field tables nested deeper than the {MAX_NESTING} levels we allow"
            ));
        }
        Ok(())
    }
}

/// basic.return, basic.deliver and basic.get-ok: the methods that carry
/// what a publisher chose (routing key, exchange name), and no table.
fn carries_no_table(method: &[u8]) -> bool {
    matches!(method.get(..4), Some([0, 60, 0, 50 | 60 | 71]))
}

/// Whether a content header's `headers` table nests at most `limit` deep,
/// followed as amq-protocol parses it (basic properties: a 16-bit flags
/// word, then content-type and content-encoding before the headers). The
/// bytes are a publisher's, so the over-estimate of `nests_at_most` would
/// let any publisher cut every consumer's connection with one message.
/// Where the parse would fail (a bad type, a length that does not fit),
/// amq-protocol stops too, no deeper than what was seen so far.
fn header_nests_at_most(payload: &[u8], limit: usize) -> bool {
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    let Some(flags) = payload.get(12..14) else {
        return true;
    };
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    let mut at = 14;
    for flag in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & flag != 0 {
            let Some(len) = payload.get(at) else {
                return true;
            };
            at += 1 + usize::from(*len);
        }
    }
    if flags & HEADERS == 0 {
        return true;
    }
    FieldTables::new(payload, at).deepest_at_most(limit)
}

/// A walk over a field table as amq-protocol-types parses one.
struct FieldTables<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where each open container ends, and whether it is a table (entries
    /// have a key) or an array (values only).
    open: Vec<(usize, bool)>,
}

impl<'a> FieldTables<'a> {
    fn new(bytes: &'a [u8], at: usize) -> Self {
        FieldTables {
            bytes,
            at,
            open: Vec::new(),
        }
    }

    /// Takes `n` bytes if they are there before `end`.
    fn take(&mut self, n: usize, end: usize) -> Option<&'a [u8]> {
        let until = self.at.checked_add(n).filter(|until| *until <= end)?;
        let taken = &self.bytes[self.at..until];
        self.at = until;
        Some(taken)
    }

    /// Opens a container whose u32 length comes next; false if it does not fit.
    fn open(&mut self, table: bool, end: usize) -> bool {
        let Some(length) = self.take(4, end) else {
            return false;
        };
        let Some(inner_end) = usize::try_from(be_u64(length))
            .ok()
            .and_then(|l| self.at.checked_add(l))
            .filter(|inner_end| *inner_end <= end)
        else {
            return false;
        };
        self.open.push((inner_end, table));
        true
    }

    fn deepest_at_most(mut self, limit: usize) -> bool {
        if !self.open(true, self.bytes.len()) {
            return true;
        }
        while let Some(&(end, table)) = self.open.last() {
            if self.open.len() > limit {
                return false;
            }
            if self.at == end {
                self.open.pop();
                continue;
            }
            if table {
                let Some(&[key_len]) = self.take(1, end) else {
                    return true;
                };
                if self.take(usize::from(key_len), end).is_none() {
                    return true;
                }
            }
            let Some(&[kind]) = self.take(1, end) else {
                return true;
            };
            let fits = match kind {
                b'V' => true,
                b't' | b'b' | b'B' => self.take(1, end).is_some(),
                b's' | b'U' | b'u' => self.take(2, end).is_some(),
                b'I' | b'i' | b'f' => self.take(4, end).is_some(),
                b'D' => self.take(5, end).is_some(),
                b'L' | b'l' | b'd' | b'T' => self.take(8, end).is_some(),
                b'S' | b'x' => match self.take(4, end) {
                    Some(length) => usize::try_from(be_u64(length))
                        .is_ok_and(|l| self.take(l, end).is_some()),
                    None => false,
                },
                b'F' => self.open(true, end),
                b'A' => self.open(false, end),
                // amq-protocol refuses an unknown type there.
                _ => false,
            };
            if !fits {
                return true;
            }
        }
        true
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

    /// A field table (its u32 length first) holding `entries`.
    fn table(entries: &[u8]) -> Vec<u8> {
        let mut t = (entries.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(entries);
        t
    }

    /// A field table nested `depth` deep (this one included), key "k".
    fn nested_table(depth: usize) -> Vec<u8> {
        let mut t = table(&[]);
        for _ in 1..depth {
            let mut entry = vec![1, b'k', b'F'];
            entry.extend_from_slice(&t);
            t = table(&entry);
        }
        t
    }

    /// A basic content header with content-type "text/plain" and `headers`.
    fn content_header(headers: &[u8]) -> Vec<u8> {
        let mut h = vec![0, 60, 0, 0];
        h.extend_from_slice(&5u64.to_be_bytes());
        h.extend_from_slice(&0xA000u16.to_be_bytes());
        h.push(10);
        h.extend_from_slice(b"text/plain");
        h.extend_from_slice(headers);
        h
    }

    /// Bytes the over-estimate takes for 300 overlapping tables.
    fn lookalike() -> Vec<u8> {
        [b'F', 0, 0, 0x03, 0xE8].repeat(300)
    }

    #[test]
    fn a_content_headers_tables_are_followed_as_lapin_parses_them() {
        let scan = |payload: &[u8]| AmqpFrames::default().scan(&frame(FRAME_HEADER, payload));
        let deep = content_header(&nested_table(MAX_NESTING + 1));
        assert!(scan(&deep).is_err());
        assert_eq!(scan(&content_header(&nested_table(MAX_NESTING))), Ok(()));
        // A publisher's string that looks nested to the over-estimate.
        let mut entry = vec![1, b's', b'S'];
        entry.extend_from_slice(&(lookalike().len() as u32).to_be_bytes());
        entry.extend_from_slice(&lookalike());
        let mut inner = vec![1, b't', b'F'];
        inner.extend_from_slice(&table(&entry));
        let mut array = vec![1, b'a', b'A'];
        array.extend_from_slice(&table(&[b'I', 0, 0, 0, 7, b'V', b'F', 0, 0, 0, 0]));
        let headers = table(&[inner, array].concat());
        let payload = content_header(&headers);
        assert!(!nests_at_most(&payload, MAX_NESTING));
        assert_eq!(scan(&payload), Ok(()));
        // Truncated or unknown: lapin refuses it there, no deeper.
        assert_eq!(scan(&content_header(&headers[..headers.len() / 2])), Ok(()));
        assert_eq!(scan(&content_header(&table(&[1, b'k', b'?']))), Ok(()));
    }

    #[test]
    fn a_delivery_s_routing_key_is_not_taken_for_tables() {
        // Exchange name and routing key, 255 bytes each: "tables" that all
        // end with the frame.
        let mut deliver = vec![0, 60, 0, 60, 3, b't', b'a', b'g'];
        deliver.extend_from_slice(&[0; 9]);
        let total = deliver.len() + 2 * 256;
        for name_length in [255u8; 2] {
            deliver.push(name_length);
            for _ in 0..51 {
                let end = (total - deliver.len() - 5) as u32;
                deliver.push(b'F');
                deliver.extend_from_slice(&end.to_be_bytes());
            }
        }
        assert_eq!(deliver.len(), total);
        assert!(!nests_at_most(&deliver, MAX_NESTING));
        let scanned = AmqpFrames::default().scan(&frame(FRAME_METHOD, &deliver));
        assert_eq!(scanned, Ok(()));
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
