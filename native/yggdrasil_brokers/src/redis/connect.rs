//! `redis` over our [`Stream`]: the crate's async connections take any
//! tokio `AsyncRead + AsyncWrite`, so `rediss://` needs none of its TLS
//! features (which would bring a second TLS stack, or rustls with its own
//! roots). Call these instead of `Client::get_async_pubsub` /
//! `get_multiplexed_async_connection_with_config`.
use std::sync::Arc;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use tokio::task::AbortHandle;

use super::limits::RespFrames;
use crate::bounded::Bounded;
use crate::tls::{connect, Stream, Tls};

/// A connection whose bulk and line lengths are bounded before the crate reads them.
type Socket = Bounded<Stream, RespFrames>;

async fn open(host: &str, port: u16, tls: Option<&Tls>) -> Result<Socket, String> {
    Ok(Bounded::new(connect(host, port, tls).await?, RespFrames::default()))
}

/// A pub/sub connection (`PSUBSCRIBE` side) to `host:port`, TLS when `tls`
/// is given; `info` carries the database, username and password. The
/// crate spawns its own driver, which ends when both halves are dropped.
pub(crate) async fn pubsub(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
    info: &RedisConnectionInfo,
) -> Result<PubSub, String> {
    PubSub::new(info, open(host, port, tls).await?)
        .await
        .map_err(|e| e.to_string())
}

/// A multiplexed connection (the publishing side). Made this way the crate
/// does not tie its driver task to the connection's clones, so the driver's
/// abort handle travels with it: dropping the last clone of the
/// [`Multiplexed`] ends the task and closes the socket, even with a request
/// still unanswered.
#[derive(Clone)]
pub(crate) struct Multiplexed {
    pub connection: MultiplexedConnection,
    _driver: Arc<AbortOnDrop>,
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Must run on the runtime (it spawns the connection's driver there).
pub(crate) async fn multiplexed(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
    info: &RedisConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<Multiplexed, String> {
    let stream = open(host, port, tls).await?;
    let (connection, driver) = MultiplexedConnection::new_with_config(info, stream, config)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(driver).abort_handle();
    Ok(Multiplexed {
        connection,
        _driver: Arc::new(AbortOnDrop(driver)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::tls::tests::{free_port, have, one_connection, Child, Pki};
    use crate::tls::{TlsSettings, Verify};

    /// `rediss://` end to end: a private redis-server with only a TLS port,
    /// requiring client certificates; PSUBSCRIBE on one connection, PUBLISH
    /// on the other, through our stack.
    #[tokio::test]
    async fn pubsub_and_publish_over_tls_against_redis_server() {
        if !have("redis-server") {
            return;
        }
        let pki = Pki::new();
        let port = free_port();
        let _server = Child(
            std::process::Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&pki.server.cert)
                .arg("--tls-key-file")
                .arg(&pki.server.key)
                .arg("--tls-ca-cert-file")
                .arg(&pki.ca.cert)
                .args([
                    "--tls-auth-clients",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--bind", "127.0.0.1", "--requirepass", "sesame"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let with_cert = TlsSettings {
            certfile: Some(pki.client.cert.clone()),
            keyfile: Some(pki.client.key.clone()),
            ..pki.trusting(Verify::Peer)
        };
        let tls = Tls::new(&with_cert, "localhost").unwrap();
        let info = RedisConnectionInfo::default()
            .set_password("sesame")
            .set_db(3);
        // Until the server is up (bounded).
        let mut attempts = 0;
        let session = loop {
            match pubsub("localhost", port, Some(&tls), &info).await {
                Ok(session) => break session,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let (mut sink, mut stream) = session.split();
        sink.psubscribe("tls.*").await.unwrap();
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let publisher = multiplexed("localhost", port, Some(&tls), &info, config)
            .await
            .unwrap();
        let mut connection = publisher.connection.clone();
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg("tls.one")
            .arg(b"\x00bytes\xff")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(receivers, 1);
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.get_channel_name(), "tls.one");
        assert_eq!(message.get_payload_bytes(), b"\x00bytes\xff");

        // Without a client certificate the server refuses the session.
        let tls = Tls::new(&pki.trusting(Verify::Peer), "localhost").unwrap();
        let e = pubsub("localhost", port, Some(&tls), &info)
            .await
            .err()
            .unwrap();
        assert!(e.contains("CertificateRequired"), "{e}");
        // Plaintext to the TLS port: an error, not a hang.
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            pubsub("localhost", port, None, &info),
        )
        .await
        .unwrap()
        .err()
        .unwrap();
        // The server resets the connection ("Connection reset by peer").
        assert!(!e.is_empty());
    }

    /// A server that answers with a string declared at 4 GiB, and keeps sending: the session
    /// fails on our cap, it does not buffer what the server sends.
    #[tokio::test]
    async fn a_server_declaring_a_huge_string_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (port, server) = one_connection(|mut tcp| async move {
            let mut request = [0u8; 64];
            let _ = tcp.read(&mut request).await;
            tcp.write_all(b"$4294967296\r\n").await.unwrap();
            while tcp.write_all(&[b'x'; 65536]).await.is_ok() {}
        })
        .await;
        let info = RedisConnectionInfo::default();
        let session = async {
            let (mut sink, _stream) = pubsub("127.0.0.1", port, None, &info).await?.split();
            sink.psubscribe("any").await.map_err(|e| e.to_string())
        };
        let error = tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the cap ends the session")
            .unwrap_err();
        assert!(error.contains("above the 536870912 we allow"), "{error}");
        server.abort();
    }
}
