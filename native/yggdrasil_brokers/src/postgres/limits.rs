//! What a PostgreSQL server's bytes may size: message lengths, checked
//! before tokio-postgres sees them.
use crate::bounded::{be_u64, Scanner};

/// The largest backend message we accept (its declared length). tokio-postgres reserves buffer
/// space for a notification, notice or parameter status from its declared length before the bytes
/// arrive (up to 4 GiB, which fails on a host that does not overcommit and aborts), and takes any
/// other message as long as it says. Ours are small: a notification is < 8 kB of payload, rows
/// are one `pg_notify` result, errors and notices a few kB.
const MAX_MESSAGE: u64 = 1024 * 1024;

/// Follows a server's messages (a type byte and a 4-byte length counting itself) and refuses one
/// that declares more than [`MAX_MESSAGE`].
#[derive(Default)]
pub(super) struct PgMessages {
    /// Passes everything: the raw socket under a TLS session (the session's
    /// own bytes are scanned inside it).
    off: bool,
    header: [u8; 5],
    got: usize,
    /// Bytes of the current message's body still to come.
    left: u64,
}

impl Scanner for PgMessages {
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !self.off && !bytes.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.got).min(bytes.len());
            self.header[self.got..self.got + n].copy_from_slice(&bytes[..n]);
            self.got += n;
            bytes = &bytes[n..];
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
            }
        }
        Ok(())
    }
}

impl PgMessages {
    /// A scanner that passes everything (see `off`).
    pub(super) fn off() -> Self {
        PgMessages {
            off: true,
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

    #[test]
    fn off_passes_anything() {
        assert_eq!(PgMessages::off().scan(b"A\x7f\xff\xff\xff"), Ok(()));
    }
}
