//! What a Redis server's bytes may size, checked before the `redis` crate reads them. The crate
//! buffers a bulk string, or a line, whole until its last byte arrives, and a reply's values until
//! its last one, with no limit of its own: a server that declares 8 GiB, or an endless array, and
//! keeps sending would grow the process until it is killed.
use crate::bounded::{scan_front, Scanner};

/// The longest bulk string, blob error, verbatim string or streamed chunk we accept: Redis's own
/// default `proto-max-bulk-len`, so no message a stock server relays is refused.
const MAX_BULK: u64 = 512 * 1024 * 1024;

/// The longest line (a type byte, then up to `\r\n`): simple strings, errors, numbers and the
/// headers of bulks and aggregates. Redis's are a few hundred bytes at most.
const MAX_LINE: usize = 64 * 1024;

/// The crate holds a reply's parsed values until the whole reply has come, so a reply is capped
/// as a whole: in bytes (one message at the largest bulk, plus room for its channel and pattern)
/// and in values (ours have a handful: a pub/sub message is four, `HELLO`'s map a few dozen).
const MAX_REPLY_BYTES: u64 = MAX_BULK + 64 * 1024 * 1024;
const MAX_REPLY_VALUES: u64 = 4096;

/// Aggregates inside aggregates: ours nest three deep at most (`HELLO`'s modules).
const MAX_DEPTH: usize = 8;

/// Follows RESP2 and RESP3 replies and pushes as the `redis` crate parses them: a line ends at
/// `\r\n` only, and a length is `-?[0-9]+` (the crate also reads `+7` or ` 7`, which no server
/// sends: refused here rather than left unchecked). Streamed strings and aggregates (`$?`), which
/// no command of ours gets, are refused.
#[derive(Default)]
pub(super) struct RespFrames {
    state: State,
    /// Open aggregates: how many values each still takes.
    open: Vec<u64>,
    /// The current reply's bytes (bodies counted when declared) and values so far.
    reply_bytes: u64,
    reply_values: u64,
    /// See [`Scanner::good`].
    good: usize,
}

#[derive(Default)]
enum State {
    /// The next byte is a type byte.
    #[default]
    Start,
    Line {
        kind: Kind,
        length: usize,
        /// The line's last byte was `\r`.
        cr: bool,
        /// A length line's digits, its number so far and its sign; `None` once it is not
        /// `-?[0-9]+`.
        digits: usize,
        number: Option<u64>,
        negative: bool,
    },
    /// A body's bytes still to come, its closing `\r\n` included.
    Body { left: u64 },
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `+ - : _ # , (`: the line is the value.
    Simple,
    /// `$ ! =`: the line is the length of a body that follows (`$-1` is nil).
    Sized { nil: bool },
    /// `* ~ >`: the line is a count of values (`*-1` is nil).
    Aggregate { nil: bool },
    /// `%`: a count of key/value pairs.
    Map,
    /// `|`: attributes (pairs), then the value they describe.
    Attributes,
}

fn kind(type_byte: u8) -> Option<Kind> {
    match type_byte {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(Kind::Simple),
        b'$' => Some(Kind::Sized { nil: true }),
        b'!' | b'=' => Some(Kind::Sized { nil: false }),
        b'*' => Some(Kind::Aggregate { nil: true }),
        b'~' | b'>' => Some(Kind::Aggregate { nil: false }),
        b'%' => Some(Kind::Map),
        b'|' => Some(Kind::Attributes),
        _ => None,
    }
}

impl RespFrames {
    /// Counts `bytes` more of the current reply.
    fn spend(&mut self, bytes: u64) -> Result<(), String> {
        self.reply_bytes = self.reply_bytes.saturating_add(bytes);
        if self.reply_bytes > MAX_REPLY_BYTES {
            return Err(format!(
                "the server sent a reply of more than the {MAX_REPLY_BYTES} bytes we allow"
            ));
        }
        Ok(())
    }

    /// A value began: counted against the reply's values.
    fn value(&mut self) -> Result<(), String> {
        self.reply_values += 1;
        if self.reply_values > MAX_REPLY_VALUES {
            return Err(format!(
                "the server sent a reply of more than the {MAX_REPLY_VALUES} values we allow"
            ));
        }
        Ok(())
    }

    /// A value ended: the aggregates it completes end too, and with the last the reply.
    fn value_done(&mut self) {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
        self.reply_bytes = 0;
        self.reply_values = 0;
    }

    /// A length or count line ended: what follows it.
    fn header_done(&mut self, kind: Kind, number: Option<u64>, negative: bool) -> Result<State, String> {
        let n = match (number, negative) {
            (Some(n), false) => n,
            // Nil: a value with nothing after it.
            (Some(1), true) if matches!(kind, Kind::Sized { nil: true } | Kind::Aggregate { nil: true }) => {
                self.value_done();
                return Ok(State::Start);
            }
            _ => return Err("the server sent a malformed length".to_owned()),
        };
        if let Kind::Sized { .. } = kind {
            if n > MAX_BULK {
                return Err(format!(
                    "the server sent a string of {n} bytes, above the {MAX_BULK} we allow"
                ));
            }
            self.spend(n + 2)?;
            return Ok(State::Body { left: n + 2 });
        }
        let values = match kind {
            Kind::Map => n.saturating_mul(2),
            Kind::Attributes => n.saturating_mul(2).saturating_add(1),
            _ => n,
        };
        if values == 0 {
            self.value_done();
        } else if self.reply_values.saturating_add(values) > MAX_REPLY_VALUES {
            return Err(format!(
                "the server sent a reply of more than the {MAX_REPLY_VALUES} values we allow"
            ));
        } else if self.open.len() >= MAX_DEPTH {
            return Err(format!(
                "the server sent values nested more than {MAX_DEPTH} deep"
            ));
        } else {
            self.open.push(values);
        }
        Ok(State::Start)
    }
}

impl Scanner for RespFrames {
    fn scan(&mut self, bytes: &[u8]) -> Result<(), String> {
        // It stops at the byte that broke the cap.
        scan_front(bytes, 0, |rest| self.scan_from(rest)).map_err(|(good, reason)| {
            self.good = good;
            reason
        })
    }

    fn good(&self) -> usize {
        self.good
    }
}

impl RespFrames {
    /// Scans from the front of `bytes`, advancing it past each byte taken.
    fn scan_from(&mut self, bytes: &mut &[u8]) -> Result<(), String> {
        loop {
            let current = *bytes;
            let Some((&byte, rest)) = current.split_first() else {
                return Ok(());
            };
            match &mut self.state {
                State::Body { left } => {
                    let n = usize::try_from(*left).map_or(current.len(), |l| l.min(current.len()));
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Start;
                        self.value_done();
                    }
                    *bytes = &current[n..];
                    continue;
                }
                State::Start => {
                    let Some(kind) = kind(byte) else {
                        return Err(format!("the server sent an unknown type byte {byte:#04x}"));
                    };
                    self.value()?;
                    self.state = State::Line {
                        kind,
                        length: 1,
                        cr: false,
                        digits: 0,
                        number: Some(0),
                        negative: false,
                    };
                }
                State::Line {
                    kind,
                    length,
                    cr,
                    digits,
                    number,
                    negative,
                } => {
                    *length += 1;
                    if *length > MAX_LINE {
                        return Err(format!(
                            "the server sent a line longer than the {MAX_LINE} bytes we allow"
                        ));
                    }
                    let after_cr = std::mem::replace(cr, byte == b'\r');
                    if byte == b'\n' && after_cr {
                        let (kind, length) = (*kind, *length as u64);
                        let number = number.filter(|_| *digits > 0);
                        let negative = *negative;
                        self.spend(length)?;
                        self.state = if kind == Kind::Simple {
                            self.value_done();
                            State::Start
                        } else {
                            self.header_done(kind, number, negative)?
                        };
                    } else if *kind != Kind::Simple {
                        // Only `-?[0-9]+` then `\r\n`: anything else is not a length.
                        *number = match byte {
                            b'\r' => *number,
                            _ if after_cr => None,
                            b'-' if *length == 2 => {
                                *negative = true;
                                *number
                            }
                            b'0'..=b'9' => {
                                *digits += 1;
                                // Past u64 is past any cap: kept as "too big".
                                number.map(|n| {
                                    n.checked_mul(10)
                                        .and_then(|n| n.checked_add(u64::from(byte - b'0')))
                                        .unwrap_or(u64::MAX)
                                })
                            }
                            _ => None,
                        };
                    }
                }
            }
            *bytes = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `stream` in chunks of every size from 1 to 7 bytes.
    fn scan_chunked(stream: &[u8]) -> Result<(), String> {
        for size in 1..=7 {
            let mut scanner = RespFrames::default();
            for chunk in stream.chunks(size) {
                scanner.scan(chunk)?;
            }
            assert!(matches!(scanner.state, State::Start), "chunks of {size}");
            assert!(scanner.open.is_empty(), "chunks of {size}");
        }
        Ok(())
    }

    #[test]
    fn replies_and_pushes_pass_in_any_chunks() {
        let mut stream = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n_\r\n#t\r\n,1.5\r\n(123\r\n".to_vec();
        // A pub/sub message with a body holding CR and LF, RESP2 then RESP3.
        stream.extend_from_slice(b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
        stream.extend_from_slice(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n");
        stream.extend_from_slice(b"%1\r\n+k\r\n=7\r\ntxt:abc\r\n!3\r\nbad\r\n");
        let big = vec![b'x'; 100_000];
        stream.extend_from_slice(format!("${}\r\n", big.len()).as_bytes());
        stream.extend_from_slice(&big);
        stream.extend_from_slice(b"\r\n");
        assert_eq!(scan_chunked(&stream), Ok(()));
    }

    #[test]
    fn a_string_above_the_cap_is_refused_before_its_body() {
        for header in [&b"$536870913\r\n"[..], b"!9999999999\r\n", b"=18446744073709551616\r\n"] {
            let error = scan_chunked(header).unwrap_err();
            assert!(error.contains("above the 536870912 we allow"), "{error}");
        }
        // At the cap: its body is awaited.
        let mut scanner = RespFrames::default();
        assert_eq!(scanner.scan(b"$536870912\r\n"), Ok(()));
        assert!(matches!(scanner.state, State::Body { left: 536_870_914 }));
    }

    #[test]
    fn a_length_must_be_digits_and_only_nil_may_be_negative() {
        for header in [
            &b"$+9223372036854775807\r\n"[..],
            b"$ 9223372036854775807\r\n",
            b"$5 \r\n",
            b"$\r\n",
            b"*-\r\n",
            b"$5\r5\r\n",
            b"!-1\r\n",
            b"=-1\r\n",
            b"$-2\r\n",
            b"%-1\r\n",
            b"$?\r\n",
        ] {
            let error = scan_chunked(header).expect_err(&String::from_utf8_lossy(header));
            assert!(error.contains("malformed length"), "{header:?}: {error}");
        }
        assert_eq!(scan_chunked(b"$-1\r\n*-1\r\n*2\r\n$-1\r\n*-1\r\n"), Ok(()));
        let error = scan_chunked(b"&1\r\n").unwrap_err();
        assert!(error.contains("unknown type byte"), "{error}");
    }

    #[test]
    fn a_line_ends_at_crlf_only() {
        // The crate reads this as one simple string that never ends.
        let mut stream = b"+".to_vec();
        for _ in 0..MAX_LINE / 2 {
            stream.extend_from_slice(b"a\n");
        }
        let error = RespFrames::default().scan(&stream).unwrap_err();
        assert!(error.contains("line longer than"), "{error}");
    }

    #[test]
    fn a_reply_is_capped_in_values_and_depth() {
        let error = scan_chunked(b"*4097\r\n").unwrap_err();
        assert!(error.contains("4096 values"), "{error}");
        // Values of nested aggregates count together.
        let mut stream = b"*2\r\n*3000\r\n".to_vec();
        stream.extend(b":1\r\n".repeat(3000));
        stream.extend_from_slice(b"%1000\r\n");
        let error = scan_chunked(&stream).unwrap_err();
        assert!(error.contains("4096 values"), "{error}");
        let error = scan_chunked(&b"*1\r\n".repeat(MAX_DEPTH + 1)).unwrap_err();
        assert!(error.contains("nested more than"), "{error}");
        // The count starts again with each reply.
        let mut stream = Vec::new();
        for _ in 0..5 {
            stream.extend_from_slice(b">4000\r\n");
            stream.extend(b"_\r\n".repeat(4000));
        }
        stream.extend_from_slice(b"|1\r\n+key\r\n+value\r\n*1\r\n:1\r\n");
        assert_eq!(scan_chunked(&stream), Ok(()));
    }

    #[test]
    fn a_reply_is_capped_in_bytes() {
        let mut scanner = RespFrames::default();
        scanner.scan(b"*3\r\n$536870912\r\n").expect("a body at the cap");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..512 {
            scanner.scan(&chunk).expect("its bytes");
        }
        scanner.scan(b"\r\n$60000000\r\n").expect("within the reply's bytes");
        let error = scanner.scan(&vec![b'x'; 60_000_002]).and_then(|()| scanner.scan(b"$9000000\r\n"));
        let error = error.unwrap_err();
        assert!(error.contains("reply of more than"), "{error}");
    }

    #[test]
    fn the_bytes_before_the_one_that_breaks_a_cap_are_good() {
        let mut stream = b"+OK\r\n".to_vec();
        stream.extend(b"*1\r\n".repeat(MAX_DEPTH + 1));
        let mut scanner = RespFrames::default();
        assert!(scanner.scan(&stream).is_err());
        // The reply before it, and the deepest header but its last byte.
        assert_eq!(scanner.good(), 5 + 4 * MAX_DEPTH + 3);
    }

    #[test]
    fn a_line_above_the_cap_is_refused() {
        let mut line = b"+".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_LINE));
        let error = RespFrames::default().scan(&line).unwrap_err();
        assert!(error.contains("line longer than"), "{error}");
    }
}
