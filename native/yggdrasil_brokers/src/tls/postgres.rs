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

use super::{Tls, Verify};
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
                    .map(|s| PostgresTlsStream(Box::new(s)))
                    .map_err(TlsError),
                None => Err(TlsError("TLS is not configured".to_string())),
            }
        })
    }
}

/// The TLS session tokio-postgres reads and writes.
pub(crate) struct PostgresTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

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
