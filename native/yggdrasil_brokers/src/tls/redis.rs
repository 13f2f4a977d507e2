//! `redis` over our [`Stream`]: the crate's async connections take any
//! tokio `AsyncRead + AsyncWrite`, so `rediss://` needs none of its TLS
//! features (which would bring a second TLS stack, or rustls with its own
//! roots). Call these instead of `Client::get_async_pubsub` /
//! `get_multiplexed_async_connection_with_config`.
use std::sync::Arc;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use tokio::task::AbortHandle;

use super::{connect, Stream, Tls};

/// A pub/sub connection (`PSUBSCRIBE` side) to `host:port`, TLS when `tls`
/// is given; `info` carries the database, username and password. The
/// crate spawns its own driver, which ends when both halves are dropped.
pub(crate) async fn pubsub(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
    info: &RedisConnectionInfo,
) -> Result<PubSub, String> {
    let stream = connect(host, port, tls).await?;
    PubSub::new(info, stream).await.map_err(|e| e.to_string())
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
    let stream: Stream = connect(host, port, tls).await?;
    let (connection, driver) = MultiplexedConnection::new_with_config(info, stream, config)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(driver).abort_handle();
    Ok(Multiplexed {
        connection,
        _driver: Arc::new(AbortOnDrop(driver)),
    })
}
