//! What a PostgreSQL server's bytes may size: message lengths, checked
//! before tokio-postgres sees them.
use std::collections::HashSet;

use crate::bounded::{be_u64, scan_front, Scanner};

/// The largest backend message we accept (its declared length). tokio-postgres reserves buffer
/// space for a notification, notice or parameter status from its declared length before the bytes
/// arrive (up to 4 GiB, which fails on a host that does not overcommit and aborts), and takes any
/// other message as long as it says. Ours are small: a notification is < 8 kB of payload, rows
/// are one `pg_notify` result, errors and notices a few kB.
const MAX_MESSAGE: u64 = 1024 * 1024;

/// tokio-postgres keeps every ParameterStatus (`S`) it is sent, by name, for the connection's
/// life. A server reports a fixed set (17 in PostgreSQL 15, each name a short identifier), again
/// when one changes: more names than this, or a longer name, is not a server's.
const MAX_PARAMETERS: usize = 64;
const MAX_PARAMETER_NAME: usize = 256;

/// Follows a server's messages (a type byte and a 4-byte length counting itself) and refuses one
/// that declares more than [`MAX_MESSAGE`], or a parameter past [`MAX_PARAMETERS`].
#[derive(Default)]
pub(super) struct PgMessages {
    mode: Mode,
    header: [u8; 5],
    got: usize,
    /// Bytes of the current message's body still to come.
    left: u64,
    /// The name of the ParameterStatus being read, until its NUL.
    parameter: Option<Vec<u8>>,
    parameters: HashSet<Vec<u8>>,
    /// See [`Scanner::good`].
    good: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    #[default]
    Scan,
    /// The raw socket of a session that asked for TLS (SSLRequest): the server answers one
    /// unframed byte. `S`: TLS follows, whose records are not messages (the session's own bytes
    /// are scanned inside it), so everything passes. `N` (`sslmode=prefer` goes on in
    /// plaintext, on this socket): the messages that follow are scanned.
    SslAnswer,
    Off,
}

impl Scanner for PgMessages {
    fn scan(&mut self, bytes: &[u8]) -> Result<(), String> {
        // It stops just after a bad header's last byte, or at a bad body piece.
        scan_front(bytes, 1, |rest| self.scan_from(rest)).map_err(|(good, reason)| {
            self.good = good;
            reason
        })
    }

    fn good(&self) -> usize {
        self.good
    }
}

impl PgMessages {
    /// Scans from the front of `bytes`, advancing it past what it took.
    fn scan_from(&mut self, bytes: &mut &[u8]) -> Result<(), String> {
        if self.mode == Mode::SslAnswer {
            let current = *bytes;
            match current.first() {
                Some(b'S') => self.mode = Mode::Off,
                Some(b'N') => {
                    self.mode = Mode::Scan;
                    *bytes = &current[1..];
                }
                // Anything else (an old server's ErrorResponse) is a message.
                Some(_) => self.mode = Mode::Scan,
                None => {}
            }
        }
        while self.mode == Mode::Scan && !bytes.is_empty() {
            let current = *bytes;
            if self.left > 0 {
                let n = usize::try_from(self.left).map_or(current.len(), |l| l.min(current.len()));
                self.left -= n as u64;
                if self.parameter.is_some() {
                    self.parameter_name(&current[..n])?;
                }
                *bytes = &current[n..];
                continue;
            }
            let n = (5 - self.got).min(current.len());
            self.header[self.got..self.got + n].copy_from_slice(&current[..n]);
            self.got += n;
            *bytes = &current[n..];
            if self.got == 5 {
                self.got = 0;
                let length = be_u64(&self.header[1..5]);
                if length > MAX_MESSAGE {
                    return Err(format!(
                        "the server sent a message of {length} bytes, above the {MAX_MESSAGE} we allow"
                    ));
                }
                // A length below 4 is the crate's to refuse.
                self.left = length.saturating_sub(4);
                if self.header[0] == b'S' {
                    self.parameter = Some(Vec::new());
                }
            }
        }
        Ok(())
    }
}

impl PgMessages {
    /// Collects a ParameterStatus's name from its body's bytes; counts it at its NUL.
    fn parameter_name(&mut self, body: &[u8]) -> Result<(), String> {
        let Some(name) = self.parameter.as_mut() else {
            return Ok(());
        };
        let end = body.iter().position(|&b| b == 0);
        name.extend_from_slice(&body[..end.unwrap_or(body.len())]);
        if name.len() > MAX_PARAMETER_NAME {
            return Err(format!(
                "the server sent a parameter name longer than the {MAX_PARAMETER_NAME} bytes we allow"
            ));
        }
        if end.is_some() || self.left == 0 {
            if let Some(name) = self.parameter.take() {
                self.parameters.insert(name);
            }
            if self.parameters.len() > MAX_PARAMETERS {
                return Err(format!(
                    "the server sent more than the {MAX_PARAMETERS} parameters we allow"
                ));
            }
        }
        Ok(())
    }

    /// The scanner of a raw socket on which the client asks for TLS first (see `Mode::SslAnswer`).
    pub(super) fn after_ssl_request() -> Self {
        PgMessages {
            mode: Mode::SslAnswer,
            ..PgMessages::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lengths_are_bounded() {
        let mut scanner = PgMessages::default();
        let mut stream = b"Z\0\0\0\x05I".to_vec();
        stream.extend_from_slice(b"A\0\0\x10\x00");
        stream.extend_from_slice(&[b'x'; 0x1000 - 4]);
        for chunk in stream.chunks(3) {
            assert_eq!(scanner.scan(chunk), Ok(()));
        }
        assert!(scanner.scan(b"A\x7f\xff\xff\xff").is_err());
    }

    fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        let mut message = b"S".to_vec();
        let length = 4 + name.len() + 1 + value.len() + 1;
        message.extend_from_slice(&(length as u32).to_be_bytes());
        message.extend_from_slice(name.as_bytes());
        message.push(0);
        message.extend_from_slice(value.as_bytes());
        message.push(0);
        message
    }

    #[test]
    fn parameters_are_bounded_in_names_not_in_reports() {
        let mut stream = Vec::new();
        for i in 1..MAX_PARAMETERS {
            stream.extend(parameter_status(&format!("param_{i}"), "on"));
        }
        // A server reports a parameter again each time it changes.
        for _ in 0..10_000 {
            stream.extend(parameter_status("application_name", "app"));
        }
        for size in [1, 3, 7, 4096] {
            let mut scanner = PgMessages::default();
            for chunk in stream.chunks(size) {
                assert_eq!(scanner.scan(chunk), Ok(()), "chunks of {size}");
            }
            let error = scanner
                .scan(&parameter_status("one_more", "x"))
                .unwrap_err();
            assert!(error.contains("more than the 64 parameters"), "{error}");
        }
        let long = "n".repeat(MAX_PARAMETER_NAME + 1);
        let error = PgMessages::default()
            .scan(&parameter_status(&long, "x"))
            .unwrap_err();
        assert!(error.contains("parameter name longer"), "{error}");
    }

    #[test]
    fn after_tls_is_agreed_the_raw_socket_passes_anything() {
        let mut scanner = PgMessages::after_ssl_request();
        assert_eq!(scanner.scan(b"S"), Ok(()));
        assert_eq!(scanner.scan(b"A\x7f\xff\xff\xff"), Ok(()));
    }

    #[test]
    fn after_tls_is_declined_the_raw_socket_is_scanned() {
        // `N` and the first message in one read, then a huge one.
        let mut scanner = PgMessages::after_ssl_request();
        assert_eq!(scanner.scan(b"NR\0\0\0\x08\0\0"), Ok(()));
        assert_eq!(scanner.scan(b"\0\0"), Ok(()));
        assert!(scanner.scan(b"R\x7f\xff\xff\xff").is_err());
        // An old server's ErrorResponse to the SSLRequest is a message too.
        let mut scanner = PgMessages::after_ssl_request();
        assert!(scanner.scan(b"E\x7f\xff\xff\xff").is_err());
    }
}
