//! A subscribing session: one consuming AMQP channel per topic, each with
//! a client-named, exclusive queue bound to its exchange, the consumers
//! forwarded into one `Messages` queue, and acks batched.
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionStatus};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::properties::{self, short};
use super::{listen_error, Binding};
use crate::broker::{Incoming, ListenError};
use crate::Data;

/// Unacknowledged messages the broker may send ahead, per subscribed topic:
/// enough to keep a consumer busy while acks travel, small enough that a
/// slow delivery side holds the backlog in the broker, not in our memory.
const PREFETCH: u16 = 1000;

/// The topics a session consumes at most. Each takes a channel of a
/// connection that has `CHANNEL_MAX` (2047), which also carries the
/// publisher's (one per exchange published to) and the short-lived ones
/// that delete queues: the rest are kept for those. A topic past it is
/// refused as a missing exchange is (warned, retried with backoff), and the
/// session's other topics go on; without it, the connection refused the
/// channel and the whole session was lost and replayed, over and over.
pub(super) const MAX_TOPICS: usize = 2_000;

/// A queue without a consumer for this long is deleted by the broker: far
/// longer than a purge's pause (two calls of at most `CALL_TIMEOUT`).
const QUEUE_EXPIRES_MS: i64 = 60_000;

/// How long dropping a session tries to delete its queues.
const DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a session looks whether its connection is still up, besides
/// waking on each of lapin's connection events.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A subscribing session: the connection, one consuming channel per topic.
pub(crate) struct Control {
    connection: Arc<Connection>,
    topics: HashMap<Binding, Subscription>,
    messages: UnboundedSender<Item>,
    acks: UnboundedSender<PendingAck>,
}

struct Subscription {
    channel: Channel,
    /// The queue bound for this topic (also its consumer's tag).
    queue: ShortString,
    /// The task forwarding this topic's consumer into `Messages`; none
    /// while paused (`Control::purge` to `Control::resume`).
    forward: Option<Forward>,
}

/// A running consumer's forwarding task.
struct Forward {
    task: AbortOnDrop,
    /// Set before cancelling the consumer on purpose: its end is then not a
    /// lost connection.
    cancelled: Arc<AtomicBool>,
    /// Resolves (closed) when the task has forwarded all it will.
    finished: oneshot::Receiver<()>,
}

/// What consumer tasks and the connection watcher feed into `Messages`.
// Not boxed: a message is the common case and an mpsc slot holds it inline.
#[allow(clippy::large_enum_variant)]
enum Item {
    Message(Incoming<Binding, Ack>),
    /// The connection (or a consumer the broker cancelled) is gone.
    Lost,
}

pub(crate) struct Messages {
    items: UnboundedReceiver<Item>,
    _watcher: AbortOnDrop,
}

/// Acknowledges one delivery of one consuming channel.
pub(crate) struct Ack {
    channel: Channel,
    delivery_tag: u64,
    acks: UnboundedSender<PendingAck>,
}

struct PendingAck {
    channel: Channel,
    delivery_tag: u64,
}

/// A session on `connection`, with nothing subscribed yet.
pub(super) fn open(connection: Arc<Connection>) -> (Control, Messages) {
    let (messages_tx, messages_rx) = mpsc::unbounded_channel();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    // Ends when the last sender (Control, or an Ack in flight) is gone.
    tokio::spawn(or_lost(acknowledge(acks_rx), messages_tx.clone()));
    let watcher = AbortOnDrop::spawn(watch_connection(
        connection.status().clone(),
        connection.events_listener(),
        messages_tx.clone(),
    ));
    let control = Control {
        connection,
        topics: HashMap::new(),
        messages: messages_tx,
        acks: acks_tx,
    };
    let messages = Messages {
        items: messages_rx,
        _watcher: watcher,
    };
    (control, messages)
}


impl Control {
    pub(super) async fn listen(&mut self, topic: &Binding) -> Result<(), ListenError> {
        let Binding {
            exchange,
            routing_key,
        } = topic;
        if self.topics.contains_key(topic) {
            return Ok(());
        }
        if self.topics.len() >= MAX_TOPICS {
            return Err(ListenError::Topic(format!(
                "{topic} waits: a rabbitmq client (broker and namespace) consumes at most \
                 {MAX_TOPICS} topics, one AMQP channel each (unsubscribe others, or give it \
                 a namespace of its own)"
            )));
        }
        let status = self.connection.status().clone();
        let listen_error = |e: lapin::Error| listen_error(&status, &e);
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(listen_error)?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(listen_error)?;
        let queue = next_queue_name();
        let queue_name = queue.clone();
        // Exclusive: the broker deletes the queue with the connection. Not
        // auto-delete: a purge cancels the consumer (`purge`), and an
        // auto-delete queue would go with it. `unlisten` deletes it, and so
        // does dropping the session (the connection may stay, for the
        // publisher); `x-expires` deletes it if both failed.
        let declare = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES_MS));
        channel
            .queue_declare(queue.clone(), declare, arguments)
            .await
            .map_err(listen_error)?;
        // Both fit in a short string: `topic` checked them before this topic was queued.
        let (exchange, routing_key) = (short(exchange), short(routing_key));
        if let Err(e) = channel
            .queue_bind(
                queue.clone(),
                exchange.map_err(ListenError::Topic)?,
                routing_key.map_err(ListenError::Topic)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            let error = listen_error(e);
            if let ListenError::Topic(_) = error {
                // The broker closed the channel; the queue it never consumed
                // from would stay until the connection closes.
                delete_queue(&self.connection, queue).await;
            }
            return Err(error);
        }
        let forward = self.consume(topic, &channel, &queue_name).await?;
        let subscription = Subscription {
            channel,
            queue: queue_name,
            forward: Some(forward),
        };
        self.topics.insert(topic.clone(), subscription);
        Ok(())
    }

    /// Starts consuming `queue` (tagged with its name) into `Messages`.
    async fn consume(
        &self,
        topic: &Binding,
        channel: &Channel,
        queue: &ShortString,
    ) -> Result<Forward, ListenError> {
        let consume = BasicConsumeOptions {
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue.clone(), queue.clone(), consume, FieldTable::default())
            .await
            .map_err(|e| listen_error(self.connection.status(), &e))?;
        let cancelled = Arc::new(AtomicBool::new(false));
        let (done, finished) = oneshot::channel();
        let forwarding = forward(
            consumer,
            topic.clone(),
            channel.clone(),
            self.messages.clone(),
            self.acks.clone(),
            (cancelled.clone(), done),
        );
        let task = AbortOnDrop::spawn(or_lost(forwarding, self.messages.clone()));
        Ok(Forward {
            task,
            cancelled,
            finished,
        })
    }
    /// A round trip on the session, only when no heartbeat was negotiated
    /// (`heartbeat: 0` here and on the server): otherwise lapin's heartbeat
    /// already ends a connection that stopped answering.
    pub(super) async fn ping(&mut self) -> Result<(), ListenError> {
        if self.connection.configuration().heartbeat() != 0 {
            return Ok(());
        }
        let Some(subscription) = self.topics.values().next() else {
            return Ok(());
        };
        let status = self.connection.status().clone();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        subscription
            .channel
            .queue_declare(subscription.queue.clone(), passive, FieldTable::default())
            .await
            .map(drop)
            .map_err(|e| listen_error(&status, &e))
    }

    /// Messages ready in this session's queues (not sent to us yet).
    pub(super) async fn backlog(&mut self) -> Result<u64, ListenError> {
        let status = self.connection.status().clone();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut ready = 0;
        for subscription in self.topics.values() {
            let queue = subscription
                .channel
                .queue_declare(subscription.queue.clone(), passive, FieldTable::default())
                .await
                .map_err(|e| listen_error(&status, &e))?;
            ready += u64::from(queue.message_count());
        }
        Ok(ready)
    }

    /// Stops every topic's consumer, waits until all they were sent is in
    /// `Messages`, then empties their queues of what the broker has not sent.
    /// The order matters: a message sent before the purge must reach
    /// `Messages` before the gap is told, so consumers are cancelled first
    /// (the broker sends nothing for a consumer after its `cancel-ok`, and
    /// lapin ends the consumer's stream after what came before it).
    pub(super) async fn purge(&mut self) -> Result<(), ListenError> {
        let status = self.connection.status().clone();
        for subscription in self.topics.values_mut() {
            let Some(forward) = subscription.forward.take() else {
                continue;
            };
            forward.cancelled.store(true, Ordering::Release);
            subscription
                .channel
                .basic_cancel(subscription.queue.clone(), BasicCancelOptions::default())
                .await
                .map_err(|e| listen_error(&status, &e))?;
            // Closed when the task ends; it cannot end without closing it.
            let _ = forward.finished.await;
            subscription
                .channel
                .queue_purge(subscription.queue.clone(), QueuePurgeOptions::default())
                .await
                .map_err(|e| listen_error(&status, &e))?;
        }
        Ok(())
    }

    /// Consumes again every topic paused by `purge`.
    pub(super) async fn resume(&mut self) -> Result<(), ListenError> {
        let paused: Vec<Binding> = self
            .topics
            .iter()
            .filter(|(_, subscription)| subscription.forward.is_none())
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in paused {
            let Some(subscription) = self.topics.get(&topic) else {
                continue;
            };
            let (channel, queue) = (subscription.channel.clone(), subscription.queue.clone());
            let forward = self.consume(&topic, &channel, &queue).await?;
            if let Some(subscription) = self.topics.get_mut(&topic) {
                subscription.forward = Some(forward);
            }
        }
        Ok(())
    }

    pub(super) async fn unlisten(&mut self, topic: &Binding) -> Result<(), ListenError> {
        let Some(subscription) = self.topics.remove(topic) else {
            return Ok(());
        };
        // Stop forwarding first, so the consumer's end is not taken for a
        // lost connection; deleting the queue cancels its consumer.
        if let Some(forward) = subscription.forward {
            forward.cancelled.store(true, Ordering::Release);
            drop(forward.task);
        }
        let status = self.connection.status().clone();
        let listen_error = |e: lapin::Error| listen_error(&status, &e);
        let channel = &subscription.channel;
        if channel.status().connected() {
            let options = QueueDeleteOptions::default();
            match channel.queue_delete(subscription.queue.clone(), options).await {
                Ok(_) => {
                    let closed = channel.close(200, "unsubscribed".into()).await;
                    return closed.map_err(listen_error);
                }
                Err(e) => match listen_error(e) {
                    ListenError::Topic(_) => {} // the broker closed the channel
                    lost => return Err(lost),
                },
            }
        }
        // The queue outlives its channel.
        delete_queue(&self.connection, subscription.queue).await;
        Ok(())
    }
}

impl Drop for Control {
    /// A session can end while its connection stays (the publisher holds
    /// it too): its queues would stay bound and fill. Deleted in the
    /// background, best effort.
    fn drop(&mut self) {
        let queues: Vec<ShortString> = self.topics.drain().map(|(_, s)| s.queue).collect();
        if queues.is_empty() || !self.connection.status().connected() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let connection = self.connection.clone();
        runtime.spawn(tokio::time::timeout(DELETE_TIMEOUT, async move {
            for queue in queues {
                delete_queue(&connection, queue).await;
            }
        }));
    }
}

impl Messages {
    pub(super) async fn next(&mut self) -> Option<Incoming<Binding, Ack>> {
        match self.items.recv().await {
            Some(Item::Message(incoming)) => Some(incoming),
            Some(Item::Lost) | None => None,
        }
    }
}

impl Ack {
    pub(super) fn hand_on(self) {
        // Handed to the session's ack task, which batches: the listener
        // loop does not wait for lapin's I/O thread once per message.
        let _ = self.acks.send(PendingAck {
            channel: self.channel,
            delivery_tag: self.delivery_tag,
        });
    }
}

/// Forwards one topic's consumer into `Messages` until it ends; its end
/// while the session is up (the broker cancelled the consumer, e.g. the
/// queue was deleted by an operator) is reported as a lost session, so the
/// shared loop makes everything anew rather than leave a topic deaf.
async fn forward(
    mut consumer: lapin::Consumer,
    topic: Binding,
    channel: Channel,
    messages: UnboundedSender<Item>,
    acks: UnboundedSender<PendingAck>,
    (cancelled, _done): (Arc<AtomicBool>, oneshot::Sender<()>),
) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let properties = &delivery.properties;
        let optional = |text: Option<String>| text.map_or(Data::Nil, Data::text);
        let metadata = Data::fields([
            ("routing_key", Data::text(delivery.routing_key.to_string())),
            (
                "message_id",
                optional(properties.message_id().as_ref().map(ToString::to_string)),
            ),
            (
                "headers",
                properties
                    .headers()
                    .as_ref()
                    .map_or(Data::Nil, properties::headers_data),
            ),
        ]);
        let incoming = Incoming {
            topic: topic.clone(),
            payload: delivery.data,
            metadata,
            ack: Some(Ack {
                channel: channel.clone(),
                delivery_tag: delivery.delivery_tag,
                acks: acks.clone(),
            }),
        };
        if messages.send(Item::Message(incoming)).is_err() {
            return; // the session is gone
        }
    }
    if !cancelled.load(Ordering::Acquire) {
        let _ = messages.send(Item::Lost);
    }
}

/// Reports the connection's loss into `Messages`: a session whose topics
/// all failed has no consumer to notice it. lapin reports I/O errors as
/// events, but not every way a connection closes, hence the periodic look.
async fn watch_connection(
    status: ConnectionStatus,
    events: impl futures_util::Stream<Item = lapin::Event> + Send,
    messages: UnboundedSender<Item>,
) {
    let mut events = std::pin::pin!(events);
    while status.connected() {
        // Any event (channel errors such as a missing exchange come here
        // too) or a second passing: look at the connection again.
        tokio::select! {
            event = events.next() => if event.is_none() { break },
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
    let _ = messages.send(Item::Lost);
}

/// Runs one of the session's tasks. One that panics loses the session (the
/// listener reconnects, and tells the subscribers) instead of leaving it up
/// with a part silently gone: a consumer no longer forwarded, or acks never
/// sent, after which the broker stops delivering at the prefetch limit.
async fn or_lost(task: impl Future<Output = ()>, messages: UnboundedSender<Item>) {
    if AssertUnwindSafe(task).catch_unwind().await.is_err() {
        let _ = messages.send(Item::Lost);
    }
}

/// Sends the acks handed to `Broker::ack`: everything queued at once is one
/// `basic.ack(multiple)` per channel (delivery tags of a channel arrive in
/// order, and every earlier one was handed on before).
async fn acknowledge(mut pending: UnboundedReceiver<PendingAck>) {
    while let Some(first) = pending.recv().await {
        let mut latest: Vec<PendingAck> = vec![first];
        while let Ok(next) = pending.try_recv() {
            match latest
                .iter_mut()
                .find(|p| p.channel.id() == next.channel.id())
            {
                Some(same) => same.delivery_tag = next.delivery_tag,
                None => latest.push(next),
            }
        }
        for ack in latest {
            let multiple = BasicAckOptions { multiple: true };
            // A channel closed meanwhile took its unacked messages with it.
            let _ = ack.channel.basic_ack(ack.delivery_tag, multiple).await;
        }
    }
}

async fn delete_queue(connection: &Connection, queue: ShortString) {
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "done".into()).await;
    }
}

/// A queue name unique to this process and subscription. Client-named: the
/// broker refuses server-named queues being declared again by name.
fn next_queue_name() -> ShortString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The start time tells apart processes that reuse a pid (containers).
    let name = format!(
        "yggdrasil.{}.{:x}.{n}",
        std::process::id(),
        *STARTED & 0xffff_ffff
    );
    name.into()
}

/// A spawned task that ends when its handle is dropped.
struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    fn spawn<F>(task: F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        AbortOnDrop(tokio::spawn(task).abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_task_that_panics_loses_the_session() {
        let (messages, mut items) = mpsc::unbounded_channel();
        or_lost(async { panic!("injected") }, messages.clone()).await;
        assert!(matches!(items.try_recv(), Ok(Item::Lost)));
        or_lost(async {}, messages).await;
        assert!(items.try_recv().is_err());
    }
}
