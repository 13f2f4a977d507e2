//! What a Redis server's bytes may size, checked before the `redis` crate reads them. The crate
//! buffers a bulk string, or a line, whole until its last byte arrives, with no limit of its own:
//! a server that declares 8 GiB and keeps sending would grow the process until it is killed.
use crate::bounded::Scanner;

/// The longest bulk string, blob error, verbatim string or streamed chunk we accept: Redis's own
/// default `proto-max-bulk-len`, so no message a stock server relays is refused.
const MAX_BULK: u64 = 512 * 1024 * 1024;

/// The longest line (a type byte, then up to `\n`): simple strings, errors, numbers and the
/// headers of bulks and aggregates. Redis's are a few hundred bytes at most.
const MAX_LINE: usize = 64 * 1024;

/// Follows RESP2 and RESP3 replies and pushes. Aggregates (`*`, `%`, `~`, `>`, `|`) need no
/// cap here: their elements are read one by one, each with its own header, and the crate
/// does not reserve space from a declared count.
#[derive(Default)]
pub(super) struct RespFrames {
    state: State,
}

#[derive(Default)]
enum State {
    /// The next byte is a type byte.
    #[default]
    Start,
    Line {
        /// Whether this line's number is the length of a body that follows.
        sized: bool,
        length: usize,
        /// The line's number so far (`None` once it is not one: the crate refuses that).
        number: Option<u64>,
        negative: bool,
    },
    /// A body's bytes still to come, its closing `\r\n` included.
    Body { left: u64 },
}

impl Scanner for RespFrames {
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.state {
                State::Body { left } => {
                    let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Start;
                    }
                    bytes = &bytes[n..];
                    continue;
                }
                State::Start => {
                    self.state = State::Line {
                        sized: matches!(byte, b'$' | b'!' | b'=' | b';'),
                        length: 1,
                        number: Some(0),
                        negative: false,
                    };
                }
                State::Line {
                    sized,
                    length,
                    number,
                    negative,
                } => {
                    *length += 1;
                    if *length > MAX_LINE {
                        return Err(format!(
                            "the server sent a line longer than the {MAX_LINE} bytes we allow"
                        ));
                    }
                    match byte {
                        b'\n' => {
                            let body = match (*sized, *negative, *number) {
                                (true, false, Some(n)) => Some(n),
                                _ => None,
                            };
                            self.state = match body {
                                Some(n) if n > MAX_BULK => {
                                    return Err(format!(
                                        "the server sent a string of {n} bytes, above the \
                                         {MAX_BULK} we allow"
                                    ))
                                }
                                Some(n) => State::Body { left: n + 2 },
                                None => State::Start,
                            };
                        }
                        b'\r' => {}
                        b'-' if *length == 2 => *negative = true,
                        b'0'..=b'9' => {
                            *number = number
                                .and_then(|n| n.checked_mul(10))
                                .and_then(|n| n.checked_add(u64::from(byte - b'0')));
                            // Past u64 is past any cap: keep it as "too big".
                            if number.is_none() && *sized && !*negative {
                                *number = Some(u64::MAX);
                            }
                        }
                        _ => *number = None,
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
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
        }
        Ok(())
    }

    #[test]
    fn replies_and_pushes_pass_in_any_chunks() {
        let mut stream = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n_\r\n#t\r\n,1.5\r\n(123\r\n".to_vec();
        // A pub/sub message with a body holding CR and LF, RESP2 then RESP3.
        stream.extend_from_slice(b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$6\r\na\r\nb\r\n");
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
    fn a_line_above_the_cap_is_refused() {
        let mut line = b"+".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_LINE));
        let error = RespFrames::default().scan(&line).unwrap_err();
        assert!(error.contains("line longer than"), "{error}");
    }
}
