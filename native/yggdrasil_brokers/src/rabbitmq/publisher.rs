//! Publishing: one confirm-mode channel per exchange published to, on the
//! shared connection. The broker closes a channel when a publish names a
//! missing exchange, and that must not fail publishes in flight to other
//! exchanges. `Ok` means the broker confirmed (basic.ack) the message.
use std::collections::HashMap;
use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::properties::short;
use super::{publish_error, Binding};
use crate::broker::PublishError;

/// The publishing side: confirm-mode channels by exchange, on the shared
/// connection.
#[derive(Clone)]
pub(crate) struct Publisher(Arc<PublisherState>);

struct PublisherState {
    connection: Arc<Connection>,
    channels: tokio::sync::Mutex<HashMap<String, Channel>>,
}

/// The publishing side on `connection`.
pub(super) fn open(connection: Arc<Connection>) -> Publisher {
    Publisher(Arc::new(PublisherState {
        connection,
        channels: tokio::sync::Mutex::new(HashMap::new()),
    }))
}

impl Publisher {
    pub(super) async fn publish(
        &self,
        topic: &Binding,
        payload: &[u8],
        properties: &BasicProperties,
    ) -> Result<(), PublishError> {
        let Binding {
            exchange,
            routing_key,
        } = topic;
        let exchange_name = short(exchange).map_err(PublishError::Refused)?;
        let routing_key = short(routing_key).map_err(PublishError::Refused)?;
        let state = &self.0;
        let status = state.connection.status().clone();
        let channel = state.channel_for(exchange).await?;
        let outcome = async {
            channel
                .basic_publish(
                    exchange_name,
                    routing_key,
                    BasicPublishOptions::default(),
                    payload,
                    properties.clone(),
                )
                .await?
                .await
        }
        .await;
        match outcome {
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Refused(
                "the broker refused the message (basic.nack)".into(),
            )),
            Ok(Confirmation::NotRequested) => Err(PublishError::Connection(
                "the publishing channel is not in confirm mode".into(),
            )),
            Err(e) => {
                let error = publish_error(&status, &e);
                if let PublishError::Refused(_) = error {
                    // The broker closed this exchange's channel: open a new
                    // one on the next publish.
                    state.forget_channel(exchange, channel.id()).await;
                }
                Err(error)
            }
        }
    }
}

impl PublisherState {
    /// The confirm-mode channel for `exchange`, opened on first use.
    async fn channel_for(&self, exchange: &str) -> Result<Channel, PublishError> {
        let mut channels = self.channels.lock().await;
        if let Some(channel) = channels.get(exchange) {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let status = self.connection.status().clone();
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| publish_error(&status, &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| publish_error(&status, &e))?;
        channels.insert(exchange.to_owned(), channel.clone());
        Ok(channel)
    }

    async fn forget_channel(&self, exchange: &str, id: u16) {
        let mut channels = self.channels.lock().await;
        if channels.get(exchange).map(Channel::id) == Some(id) {
            channels.remove(exchange);
        }
    }
}
