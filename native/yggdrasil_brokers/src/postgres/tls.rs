//! tokio-postgres over our TLS: [`PostgresTls`] implements the crate's
//! `MakeTlsConnect` (for `Config::connect`, which opens the socket) and
//! `TlsConnect` (for `connect_raw` over a stream we opened), and
//! [`SslMode`] maps libpq's five `sslmode`s onto tokio-postgres' three plus
//! our [`Verify`]:
//!
//! | sslmode     | tokio-postgres `SslMode` | TLS                              |
//! |-------------|--------------------------|----------------------------------|
//! | disable     | Disable                  | none                             |
//! | prefer      | Prefer                   | if the server offers it, `None`  |
//! | require     | Require                  | `Verify::None`                   |
//! | verify-ca   | Require                  | `Verify::ChainOnly`              |
//! | verify-full | Require                  | `Verify::Peer`                   |
//!
//! Usage (the broker module):
//! ```ignore
//! let mode = SslMode::parse("verify-full")?;
//! let tls = match mode.verify() {
//!     Some(verify) => Some(Tls::new(&TlsSettings { verify, ..settings }, &host)?),
//!     None => None,
//! };
//! config.ssl_mode(mode.tokio_postgres());
//! let (client, connection) = config.connect(PostgresTls::new(tls)).await?;
//! ```
//! Channel binding (SCRAM-SHA-256-PLUS) is not offered: `channel_binding`
//! returns none, so SCRAM runs without it, as with libpq's default
//! `channel_binding=prefer` against a server whose certificate hash it
//! cannot compute.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::limits::PgMessages;
use crate::bounded::Bounded;
use crate::tls::{Tls, Verify};
use crate::Error;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    /// libpq's default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (libpq's
    /// `allow` is refused: it means plaintext first, which we do not do).
    pub(crate) fn parse(text: &str) -> Result<SslMode, Error> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(Error::new(format!(
                "url: sslmode {other:?} is not one of disable, prefer, require, verify-ca, \
                 verify-full"
            ))),
        }
    }

    /// How much to verify when TLS is used; `None` for `disable` (no TLS:
    /// make no [`Tls`]).
    pub(crate) fn verify(self) -> Option<Verify> {
        match self {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(Verify::None),
            SslMode::VerifyCa => Some(Verify::ChainOnly),
            SslMode::VerifyFull => Some(Verify::Peer),
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS and whether a
    /// server that declines it is refused.
    pub(crate) fn tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Our TLS as tokio-postgres' connector. `None` only goes with
/// `sslmode=disable` (tokio-postgres then never calls it; the crate gives
/// no way to say "no TLS" to `prefer`, whose TLS is always attempted when
/// the server offers it), so one connector type serves every mode.
#[derive(Clone, Debug)]
pub(crate) struct PostgresTls(Option<Tls>);

impl PostgresTls {
    pub(crate) fn new(tls: Option<Tls>) -> Self {
        PostgresTls(tls)
    }

    /// TLS that does not authenticate the server (`require`, `prefer`).
    pub(crate) fn unverified(&self) -> bool {
        self.0.as_ref().is_some_and(|tls| !tls.verifies_peer())
    }
}

/// A handshake failure, for tokio-postgres' `Error::tls` (it prints
/// "error performing TLS handshake: <this>").
#[derive(Debug)]
pub(crate) struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTls;
    type Error = TlsError;

    /// `domain` is the host tokio-postgres connects to; the name checked is
    /// the one [`Tls`] was made with (the same host, or `tls_server_name`).
    fn make_tls_connect(&mut self, _domain: &str) -> Result<PostgresTls, TlsError> {
        Ok(self.clone())
    }
}

impl<S> TlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PostgresTlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            match &self.0 {
                Some(tls) => tls
                    .handshake(stream)
                    .await
                    .map(|s| PostgresTlsStream(Box::new(Bounded::new(s, PgMessages::default()))))
                    .map_err(TlsError),
                None => Err(TlsError("TLS is not configured".to_string())),
            }
        })
    }
}

/// The TLS session tokio-postgres reads and writes.
/// Its bytes are scanned as a plaintext socket's are.
pub(crate) struct PostgresTlsStream<S>(Box<Bounded<tokio_rustls::client::TlsStream<S>, PgMessages>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::tls::tests::{one_connection, server_config, Pem, Pki};
    use crate::tls::TlsSettings;

    /// What the fake server saw of one session.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        ssl_request: bool,
        tls: bool,
        /// The startup message (with our user name) arrived.
        startup: bool,
    }

    const SSL_REQUEST: u32 = 80877103;

    /// Reads the startup message and refuses it with an ErrorResponse,
    /// whose text the client then reports.
    async fn refuse_startup<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> bool {
        let Ok(len) = s.read_u32().await else {
            return false;
        };
        let mut body = vec![0u8; (len as usize).saturating_sub(4).min(10_000)];
        if s.read_exact(&mut body).await.is_err() {
            return false;
        }
        let seen = body.windows(15).any(|w| w == b"user\0yggdrasil\0");
        let fields = b"SFATAL\0VFATAL\0C28000\0Mfake server says no\0\0";
        let mut reply = vec![b'E'];
        reply.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        reply.extend_from_slice(fields);
        let _ = s.write_all(&reply).await;
        let _ = s.flush().await;
        seen
    }

    /// A one-session fake PostgreSQL server: answers an SSLRequest with
    /// 'S' (then TLS with `pem`) when `pem` is given, else 'N'.
    async fn fake_server(pem: Option<Pem>) -> (u16, tokio::task::JoinHandle<Seen>) {
        one_connection(|mut tcp| async move {
            let mut head = [0u8; 8];
            tcp.peek(&mut head).await.unwrap();
            let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            if code != SSL_REQUEST {
                let startup = refuse_startup(&mut tcp).await;
                return Seen {
                    ssl_request: false,
                    tls: false,
                    startup,
                };
            }
            tcp.read_exact(&mut head).await.unwrap();
            match pem {
                None => {
                    tcp.write_all(b"N").await.unwrap();
                    let startup = refuse_startup(&mut tcp).await;
                    Seen {
                        ssl_request: true,
                        tls: false,
                        startup,
                    }
                }
                Some(pem) => {
                    tcp.write_all(b"S").await.unwrap();
                    let startup = match TlsAcceptor::from(server_config(&pem, None))
                        .accept(tcp)
                        .await
                    {
                        Ok(mut tls) => refuse_startup(&mut tls).await,
                        Err(_) => false,
                    };
                    Seen {
                        ssl_request: true,
                        tls: true,
                        startup,
                    }
                }
            }
        })
        .await
    }

    /// Connects with `sslmode` to a fake server; the client's error text
    /// and what the server saw.
    async fn session(pki: &Pki, sslmode: &str, server_pem: Option<&Pem>) -> (String, Seen) {
        let mode = SslMode::parse(sslmode).unwrap();
        let tls = mode.verify().map(|verify| {
            Tls::new(
                &TlsSettings {
                    verify,
                    ..pki.trusting(verify)
                },
                "localhost",
            )
            .unwrap()
        });
        let (port, server) = fake_server(server_pem.cloned()).await;
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .port(port)
            .user("yggdrasil")
            .dbname("db")
            .ssl_mode(mode.tokio_postgres())
            .connect_timeout(Duration::from_secs(5));
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            config.connect(PostgresTls::new(tls)),
        )
        .await
        .expect("bounded");
        let error = match result {
            Ok(_) => panic!("the fake server refuses every session"),
            Err(e) => format!(
                "{e}: {:?}",
                std::error::Error::source(&e).map(|s| s.to_string())
            ),
        };
        let seen = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the fake server ends")
            .unwrap();
        (error, seen)
    }

    const TLS_STARTUP: Seen = Seen {
        ssl_request: true,
        tls: true,
        startup: true,
    };

    #[tokio::test]
    async fn the_five_sslmodes() {
        let pki = Pki::new();
        let refused = "fake server says no";

        // disable: no SSLRequest at all, even to a server that offers TLS.
        let (e, seen) = session(&pki, "disable", Some(&pki.server)).await;
        assert!(e.contains(refused), "{e}");
        assert_eq!(
            seen,
            Seen {
                ssl_request: false,
                tls: false,
                startup: true
            }
        );

        // prefer: plaintext when the server declines, TLS (unverified) when offered.
        let (e, seen) = session(&pki, "prefer", None).await;
        assert!(e.contains(refused), "{e}");
        assert_eq!(
            seen,
            Seen {
                ssl_request: true,
                tls: false,
                startup: true
            }
        );
        let (e, seen) = session(&pki, "prefer", Some(&pki.untrusted)).await;
        assert!(e.contains(refused), "{e}");
        assert_eq!(seen, TLS_STARTUP);

        // require: TLS or nothing, the server not authenticated.
        let (e, seen) = session(&pki, "require", None).await;
        assert!(e.contains("server does not support TLS"), "{e}");
        assert!(seen.ssl_request && !seen.startup, "{seen:?}");
        let (e, seen) = session(&pki, "require", Some(&pki.untrusted)).await;
        assert!(e.contains(refused), "{e}");
        assert_eq!(seen, TLS_STARTUP);

        // verify-ca: the chain, not the name.
        let (e, seen) = session(&pki, "verify-ca", Some(&pki.other_name)).await;
        assert!(e.contains(refused), "{e}");
        assert_eq!(seen, TLS_STARTUP);
        let (e, seen) = session(&pki, "verify-ca", Some(&pki.untrusted)).await;
        assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
        assert!(!seen.startup);

        // verify-full: the chain and the name.
        let (e, seen) = session(&pki, "verify-full", Some(&pki.server)).await;
        assert!(e.contains(refused), "{e}");
        assert_eq!(seen, TLS_STARTUP);
        let (e, seen) = session(&pki, "verify-full", Some(&pki.other_name)).await;
        assert!(e.contains("not valid for name"), "{e}");
        assert!(!seen.startup);
    }

    #[test]
    fn sslmode_mapping() {
        use tokio_postgres::config::SslMode as Pg;
        let table = [
            ("disable", Pg::Disable, None),
            ("prefer", Pg::Prefer, Some(Verify::None)),
            ("require", Pg::Require, Some(Verify::None)),
            ("verify-ca", Pg::Require, Some(Verify::ChainOnly)),
            ("verify-full", Pg::Require, Some(Verify::Peer)),
        ];
        for (text, pg, verify) in table {
            let mode = SslMode::parse(text).unwrap();
            assert_eq!(
                (mode.tokio_postgres(), mode.verify()),
                (pg, verify),
                "{text}"
            );
        }
        for bad in ["allow", "VERIFY-FULL", "", "true"] {
            let e = SslMode::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("url: sslmode "), "{e}");
        }
    }
}
