//! lapin over our TLS. lapin's `Connection::connector` takes a closure that
//! returns the socket (`AsyncTcpStream`, tcp-stream's type over the tokio
//! runtime's `Compat<TcpStream>`); [`amqp_stream`] opens it, for `amqps://`
//! with the handshake done by rustls-connector over *our* `ClientConfig`
//! (its `From<Arc<ClientConfig>>`), so roots, client certificate and
//! verifier are the same as redis' and postgres'. lapin's own TLS setup
//! (`connect_with_config`, `OwnedTLSConfig`) is not used: it would build a
//! config of its own from strings.
//!
//! In rabbitmq.rs the connector closure becomes:
//! ```ignore
//! let stream = tls::amqp::amqp_stream(&host, port, tls.as_ref()).await?;
//! let stream = std::sync::Mutex::new(Some(stream));
//! Connection::connector(uri, runtime, async move |_uri, _rt| {
//!     stream.lock().map(|mut s| s.take()).unwrap_or(None)
//!         .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected).into())
//! }, properties)
//! ```
use async_compat::{Compat, CompatExt};
use lapin::tcp::RustlsConnector;
use lapin::AsyncTcpStream;
use tokio::net::TcpStream;

use super::{connect_tcp, handshake_reason, Tls};

/// What lapin's connector closure returns with its tokio runtime.
pub(crate) type AmqpStream = AsyncTcpStream<Compat<TcpStream>>;

/// A TCP connection to `host:port` for lapin, after a TLS handshake when
/// `tls` is given. Both steps are bounded (`CONNECT_TIMEOUT`, the
/// handshake timeout); on failure the socket is dropped (closed).
pub(crate) async fn amqp_stream(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
) -> Result<AmqpStream, String> {
    let tcp = connect_tcp(host, port).await?.compat();
    let Some(tls) = tls else {
        return Ok(AsyncTcpStream::Plain(tcp));
    };
    let connector = RustlsConnector::from(tls.client_config());
    let name = tls.server_name();
    let handshake = connector.connect_async(&name, tcp);
    match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
        Ok(Ok(stream)) => Ok(AsyncTcpStream::Rustls(stream)),
        Ok(Err(e)) => Err(tls.failure(&handshake_reason(&e))),
        Err(_) => Err(tls.failure(&format!(
            "no answer within {:?} (is it a TLS port?)",
            tls.handshake_timeout()
        ))),
    }
}
