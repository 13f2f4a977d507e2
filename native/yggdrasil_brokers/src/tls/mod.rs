//! The one TLS stack of all three brokers (section 10.1): rustls 0.23 with
//! the `ring` provider, TLS 1.2 and 1.3 only.
//!
//! [`Tls::new`] reads and checks every file when a client is opened, so a
//! bad value is an `Error` naming its key before anything starts; connecting
//! never reads a file. [`connect`] opens TCP (bounded), then the handshake
//! (bounded); its errors are strings for the shared reconnect loop's
//! warnings, naming the TLS reason ("invalid peer certificate: UnknownIssuer").
//!
//! Each broker hands [`Stream`] (or, where TLS is negotiated inside the
//! protocol, [`Tls::handshake`]) to its client crate in its own module.
use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::Error;

#[cfg(test)]
pub(crate) mod tests;

/// How long a TCP connect may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take once TCP is up (a plaintext server
/// that waits for its own protocol never answers a ClientHello).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the server is checked (`tls_verify`, or a broker's own TLS mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// The chain up to a trusted root and the host name (`:verify_peer`,
    /// `sslmode=verify-full`).
    #[default]
    Peer,
    /// The chain up to a trusted root, not the name (`sslmode=verify-ca`).
    ChainOnly,
    /// Encrypted, the server not authenticated (`:verify_none`,
    /// `sslmode=require`/`prefer`). Handshake signatures are still checked,
    /// so the session keys belong to whoever holds the presented certificate.
    None,
}

/// The TLS keys of section 10.1 (without `tls` itself: no `TlsSettings`,
/// no TLS). Paths are read by [`Tls::new`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `tls_cacertfile`: PEM CA certificates trusted instead of the system's.
    pub cacertfile: Option<std::path::PathBuf>,
    /// `tls_certfile`: the client certificate chain (PEM), with `keyfile`.
    pub certfile: Option<std::path::PathBuf>,
    /// `tls_keyfile`: the client certificate's private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1).
    pub keyfile: Option<std::path::PathBuf>,
    /// `tls_verify`.
    pub verify: Verify,
    /// `tls_server_name`: SNI and the name checked (default: the host).
    pub server_name: Option<String>,
}

/// A checked TLS client setup, cheap to clone (one per client, used by
/// every connection it opens).
#[derive(Clone)]
pub(crate) struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    verify: Verify,
    handshake_timeout: Duration,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files now (when a client is opened), never at
    /// connect time. `host` is the broker's host (an IPv6 address with or
    /// without brackets), the name checked unless `server_name` is set.
    ///
    /// Errors name the key: `tls_cacertfile: cannot read "/x": No such file
    /// or directory`, `tls_keyfile: "/k" holds no private key`, ...
    pub(crate) fn new(settings: &TlsSettings, host: &str) -> Result<Tls, Error> {
        let server_name = server_name(settings, host)?;
        let identity = match (&settings.certfile, &settings.keyfile) {
            (Some(certfile), Some(keyfile)) => Some((
                read_certificates("tls_certfile", certfile)?,
                read_key(keyfile)?,
            )),
            (None, None) => None,
            _ => return Err(Error::new("tls_certfile and tls_keyfile go together")),
        };
        // A CA file is checked even under `Verify::None`: a value that
        // cannot work is an error whatever else is set.
        let custom_roots = match &settings.cacertfile {
            Some(path) => Some(read_roots(path)?),
            None => None,
        };
        let roots = || match &custom_roots {
            Some(roots) => Ok(roots.clone()),
            None => system_roots(),
        };
        // rustls 0.23.48 deprecates this: ring has no post-quantum key
        // exchange (X25519MLKEM768, which aws-lc-rs offers), so sessions use
        // classical X25519/P-256/P-384 only. Chosen anyway: aws-lc-rs is the
        // C/cmake build this crate keeps out (see Cargo.toml); revisit if a
        // broker ever requires PQ key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::new(format!("tls: {e}")))?;
        let builder = match settings.verify {
            Verify::Peer => builder.with_root_certificates(roots()?),
            Verify::ChainOnly => {
                let webpki = WebPkiServerVerifier::builder_with_provider(roots()?, provider)
                    .build()
                    .map_err(|e| Error::new(format!("tls: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
            Verify::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        };
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::new(format!(
                    "tls_keyfile: {:?} does not fit tls_certfile {:?}: {e}",
                    settings.keyfile.as_deref().unwrap_or(Path::new("")),
                    settings.certfile.as_deref().unwrap_or(Path::new("")),
                ))
            })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Tls {
            config: Arc::new(config),
            server_name,
            verify: settings.verify,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Whether the server is authenticated (chain and name); the caller
    /// warns once per connection when not (`Verify::None`), as 10.1 says.
    pub(crate) fn verifies_peer(&self) -> bool {
        self.verify == Verify::Peer
    }

    #[cfg(test)]
    pub(crate) fn verify(&self) -> Verify {
        self.verify
    }

    /// The name sent as SNI and checked: `tls_server_name` or the host.
    #[cfg(test)]
    pub(crate) fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// Bounds the handshake differently from [`HANDSHAKE_TIMEOUT`].
    #[cfg(test)]
    pub(crate) fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The client side of a handshake over `io`, bounded by the handshake
    /// timeout. On failure `io` is dropped (closed) and the error names the
    /// reason: "TLS handshake with localhost failed: invalid peer
    /// certificate: UnknownIssuer".
    pub(crate) async fn handshake<S>(&self, io: S) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let connector = TlsConnector::from(self.config.clone());
        let handshake = connector.connect(self.server_name.clone(), io);
        match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.failure(&handshake_reason(&e))),
            Err(_) => Err(self.failure(&format!(
                "no answer within {:?} (is it a TLS port?)",
                self.handshake_timeout
            ))),
        }
    }

    /// "TLS handshake with <name> failed: <reason>".
    fn failure(&self, reason: &str) -> String {
        format!(
            "TLS handshake with {} failed: {reason}",
            self.server_name.to_str()
        )
    }
}

/// What went wrong in a handshake, in words: rustls' own error when there
/// is one ("invalid peer certificate: UnknownIssuer"), else the I/O error,
/// with a hint where the usual cause is a plaintext port.
fn handshake_reason(e: &io::Error) -> String {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!("{tls} (is it a TLS port?)")
            }
            other => other.to_string(),
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the server closed the connection (is it a TLS port?)".to_string()
        }
        _ => io_reason(e),
    }
}

/// An I/O error without the " (os error N)" tail.
fn io_reason(e: &io::Error) -> String {
    let mut text = e.to_string();
    if let Some(at) = text.find(" (os error ") {
        text.truncate(at);
    }
    text
}

fn server_name(settings: &TlsSettings, host: &str) -> Result<ServerName<'static>, Error> {
    match &settings.server_name {
        Some(name) => ServerName::try_from(name.clone()).map_err(|_| {
            Error::new(format!(
                "tls_server_name: {name:?} is not a valid DNS name or IP address"
            ))
        }),
        None => {
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            ServerName::try_from(bare.to_string()).map_err(|_| {
                Error::new(format!(
                    "tls: the host {host:?} is not a valid DNS name or IP address to check the \
                     certificate against; set tls_server_name"
                ))
            })
        }
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::new(format!("{key}: cannot read {path:?}: {}", io_reason(&e))))
}

fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read_file(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| Error::new(format!("{key}: {path:?} is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(Error::new(format!(
            "{key}: {path:?} holds no PEM certificate"
        )));
    }
    Ok(certificates)
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for (n, certificate) in read_certificates("tls_cacertfile", path)?
        .into_iter()
        .enumerate()
    {
        roots.add(certificate).map_err(|e| {
            Error::new(format!(
                "tls_cacertfile: certificate {} of {path:?} cannot be a trust anchor: {e}",
                n + 1
            ))
        })?;
    }
    Ok(Arc::new(roots))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read_file("tls_keyfile", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            Error::new(format!("tls_keyfile: {path:?} holds no private key"))
        }
        // The messages quote at most a BEGIN line, never key material.
        other => Error::new(format!("tls_keyfile: {path:?} is not valid PEM: {other}")),
    })
}

/// The system's trust store, read once per process (a few ms of file
/// reading and parsing; a client may be opened on a scheduler thread).
/// A failed read is not kept, so it is tried again at the next open.
fn system_roots() -> Result<Arc<RootCertStore>, Error> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Error::new(format!(
            "tls: no CA certificate found in the system's trust store{why}; set tls_cacertfile"
        )));
    }
    Ok(ROOTS.get_or_init(|| Arc::new(roots)).clone())
}

/// `Verify::ChainOnly`: webpki's verification, except that a certificate
/// for another name is accepted. webpki checks the chain before the name,
/// so `NotValidForName` means the chain up to a trusted root was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `Verify::None`: any certificate chain is accepted, but the handshake's
/// signatures are checked with the provider's algorithms, so the peer must
/// hold the key of the certificate it presents.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A broker socket, plaintext or TLS: what [`connect`] returns and what a
/// client crate is handed.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    #[cfg(test)]
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A TCP connection (bounded by [`CONNECT_TIMEOUT`], no Nagle), open as is
/// or after a TLS handshake (bounded by the handshake timeout). Whatever
/// fails or times out is dropped, so its socket is closed.
pub(crate) async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("{}: {}", authority(bare, port), io_reason(&e))),
        Err(_) => {
            return Err(format!(
                "{}: no TCP connection within {CONNECT_TIMEOUT:?}",
                authority(bare, port)
            ))
        }
    };
    // Small requests and replies: do not wait for more to send.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// [`connect_tcp`], then the handshake when `tls` is given.
pub(crate) async fn connect(host: &str, port: u16, tls: Option<&Tls>) -> Result<Stream, String> {
    let tcp = connect_tcp(host, port).await?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(tls) => tls
            .handshake(tcp)
            .await
            .map(|stream| Stream::Tls(Box::new(stream))),
    }
}
