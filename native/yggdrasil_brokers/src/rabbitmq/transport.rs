//! lapin over our TLS.
//!
//! lapin's `Connection::connector` takes a closure returning the socket as
//! `AsyncTcpStream<RK::TcpStream>`, where `RK` is the runtime kit (async-rs)
//! it runs on; with lapin's stock tokio kit that is `Compat<TcpStream>`, so
//! a TLS session could only be handed over as tcp-stream's
//! `AsyncTcpStream::Rustls` variant. That variant exists only with
//! tcp-stream's rustls features, which also build rustls-connector,
//! futures-rustls and p12-keystore (PKCS#12: a RustCrypto + x509-parser
//! stack of ~55 crates, measured below) that we would never call.
//!
//! Instead [`AmqpKit`] is lapin's tokio kit with one change: its
//! `TcpStream` is `Compat<`[`Stream`]`>`, our plaintext-or-TLS socket, so
//! [`amqp_stream`] returns `AsyncTcpStream::Plain(..)` for both `amqp://`
//! and `amqps://`, the TLS done by [`crate::tls::connect`] like redis' and
//! postgres'. lapin needs no TLS feature at all.
//!
//! In rabbitmq.rs (instead of `lapin::runtime::default_runtime()`):
//! ```ignore
//! let stream = tls::amqp::amqp_stream(&host, port, tls.as_ref()).await?;
//! let stream = std::sync::Mutex::new(Some(stream));
//! Connection::connector(uri, tls::amqp::runtime()?, async move |_uri, _rt| {
//!     stream.lock().map(|mut s| s.take()).unwrap_or(None)
//!         .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected).into())
//! }, properties)
//! ```
//! (Must be called on the runtime: the kit binds to the current tokio one.)
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::io::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use async_compat::{Compat, CompatExt};
use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::Task;
use async_rs::{Runtime, Tokio};
use futures_util::Stream as FuturesStream;
use lapin::AsyncTcpStream;

use crate::tls::{connect, Stream, Tls};

/// What lapin's connector closure returns with [`AmqpKit`].
pub(crate) type AmqpStream = AsyncTcpStream<Compat<Stream>>;

/// A TCP connection to `host:port` for lapin, after a TLS handshake when
/// `tls` is given (both bounded; on failure the socket is closed).
pub(crate) async fn amqp_stream(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
) -> Result<AmqpStream, String> {
    Ok(AsyncTcpStream::Plain(
        connect(host, port, tls).await?.compat(),
    ))
}

/// lapin's runtime on the current tokio runtime, with [`AmqpKit`]; an
/// error (not a panic, as `Tokio::current` would) outside one.
pub(crate) fn runtime() -> Result<Runtime<AmqpKit>, String> {
    let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
    Ok(Runtime::new(AmqpKit(Tokio::default().with_handle(handle))))
}

/// async-rs' tokio kit, everything delegated, except that its sockets are
/// our [`Stream`]s.
#[derive(Clone, Debug)]
pub(crate) struct AmqpKit(Tokio);

impl RuntimeKit for AmqpKit {}

impl Executor for AmqpKit {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.0.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn_blocking(f)
    }
}

impl Reactor for AmqpKit {
    type TcpStream = Compat<Stream>;
    type Sleep = <Tokio as Reactor>::Sleep;

    /// The trait's bound is async-rs' `AsSysFd` (unnameable: a private
    /// module), which is `AsFd + AsRawFd` on unix.
    fn register<H: Read + Write + AsFd + AsRawFd + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static>
    {
        self.0.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl FuturesStream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    /// Only used if lapin connects by itself (we always hand it a socket):
    /// plaintext, on the kit's runtime.
    // Not an `async fn`: that would borrow `self`, and the trait wants a
    // `'static` future.
    #[allow(clippy::manual_async_fn)]
    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        async move {
            connect(&addr.ip().to_string(), addr.port(), None)
                .await
                .map(CompatExt::compat)
                .map_err(io::Error::other)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use lapin::{Connection, ConnectionProperties};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::tls::tests::{server_config, Pki};
    use crate::tls::{TlsSettings, Verify};

    /// lapin speaks through our TLS session: a fake broker behind a rustls
    /// acceptor receives the AMQP protocol header decrypted, then closes;
    /// lapin reports an error (no hang) and leaves nothing running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn lapin_writes_through_our_tls_stream() {
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = server_config(&pki.server, None);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(config).accept(tcp).await.unwrap();
            let mut header = [0u8; 8];
            tls.read_exact(&mut header).await.unwrap();
            let _ = tls.shutdown().await;
            header
        });

        let tls = Tls::new(&pki.trusting(Verify::Peer), "localhost").unwrap();
        let stream = amqp_stream("localhost", port, Some(&tls)).await.unwrap();
        let stream = Mutex::new(Some(stream));
        let uri = lapin::uri::AMQPUri {
            authority: lapin::uri::AMQPAuthority {
                host: "localhost".into(),
                port,
                ..Default::default()
            },
            ..Default::default()
        };
        let connecting = Connection::connector(
            uri,
            runtime().unwrap(),
            async move |_uri, _runtime| {
                stream
                    .lock()
                    .map(|mut s| s.take())
                    .unwrap_or(None)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected).into())
            },
            ConnectionProperties::default(),
        );
        let result = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .expect("lapin gives up once the server closed");
        assert!(result.is_err());
        let header = server.await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
    }

    #[test]
    fn the_runtime_outside_tokio_is_an_error_not_a_panic() {
        assert!(runtime().is_err());
    }

    /// The stream itself, plain and TLS, through lapin's I/O traits.
    #[tokio::test]
    async fn amqp_stream_plain_and_tls() {
        use futures_util::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let pki = Pki::new();
        let none = TlsSettings {
            verify: Verify::None,
            ..TlsSettings::default()
        };
        let tls = Tls::new(&none, "localhost").unwrap();
        let (port, server) =
            crate::tls::tests::tls_server(server_config(&pki.untrusted, None)).await;
        let mut stream = amqp_stream("127.0.0.1", port, Some(&tls)).await.unwrap();
        stream.write_all(b"abcd").await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"dcba");
        server.await.unwrap().unwrap();

        // A refused connection is an error naming the address.
        drop(stream);
        let e = amqp_stream("127.0.0.1", port, None).await.err().unwrap();
        assert!(e.starts_with(&format!("127.0.0.1:{port}: ")), "{e}");
    }

    /// A private RabbitMQ started by the test suite's `ctl.sh` (plaintext),
    /// stopped when dropped.
    struct Rabbit {
        dir: std::path::PathBuf,
        port: u16,
    }

    const CTL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test/brokers/ctl.sh");

    impl Rabbit {
        fn start() -> Rabbit {
            let dir = std::env::temp_dir().join(format!("ygg-tls-rabbit-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let out = std::process::Command::new(CTL)
                .args(["start", "rabbitmq", dir.to_str().unwrap()])
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "ctl.sh start rabbitmq failed");
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            let port = line.split_whitespace().next().unwrap().parse().unwrap();
            Rabbit { dir, port }
        }
    }

    impl Drop for Rabbit {
        fn drop(&mut self) {
            let _ = std::process::Command::new(CTL)
                .args(["stop", self.dir.to_str().unwrap_or("")])
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// `amqps://` end to end: lapin on [`AmqpKit`] over our TLS session to
    /// an in-process TLS terminator that forwards to a private RabbitMQ
    /// (its TLS listener would need its own config in ctl.sh): the whole
    /// AMQP handshake, a confirmed publish and its delivery, a clean close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn amqps_end_to_end_through_a_tls_terminator_to_rabbitmq() {
        use futures_util::StreamExt;
        use lapin::options::{
            BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
        };
        use lapin::types::FieldTable;
        use lapin::{BasicProperties, Confirmation};

        if !crate::tls::tests::have("rabbitmq-server") {
            return;
        }
        let rabbit = tokio::task::spawn_blocking(Rabbit::start).await.unwrap();
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_port = listener.local_addr().unwrap().port();
        let config = server_config(&pki.server, None);
        let upstream_port = rabbit.port;
        let terminator = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = TlsAcceptor::from(config.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });

        let tls = Tls::new(&pki.trusting(Verify::Peer), "localhost").unwrap();
        let stream = amqp_stream("localhost", tls_port, Some(&tls))
            .await
            .unwrap();
        let stream = Mutex::new(Some(stream));
        let uri = lapin::uri::AMQPUri {
            authority: lapin::uri::AMQPAuthority {
                host: "localhost".into(),
                port: tls_port,
                ..Default::default()
            },
            ..Default::default()
        };
        let connection = tokio::time::timeout(
            Duration::from_secs(20),
            Connection::connector(
                uri,
                runtime().unwrap(),
                async move |_uri, _runtime| {
                    stream
                        .lock()
                        .map(|mut s| s.take())
                        .unwrap_or(None)
                        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected).into())
                },
                ConnectionProperties::default(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "ygg-tls-test".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "ygg-tls-consumer".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.name().clone(),
                BasicPublishOptions::default(),
                b"over tls",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(confirmation, Confirmation::Ack(_)));
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.data, b"over tls");
        connection.close(200, "done".into()).await.unwrap();
        terminator.abort();
        drop(rabbit);
    }
}
