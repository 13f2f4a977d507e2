//! Where every broker client's events go, and the one thread that sends
//! most of them.
//!
//! Subscriber events, connection states and warnings go through one
//! `crossbeam_channel` shared by every client and leave it on ONE delivery
//! thread (`yggdrasil-delivery`, a plain `std::thread`), which builds each
//! message in an `OwnedEnv` and `enif_send`s it: no scheduler ever waits on
//! a broker or sends its traffic, and the events for one pid keep the order
//! the client produced. Publish replies skip the thread (see [`Outbox`]).
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::LazyLock;

use crossbeam_channel::{Receiver, Sender};
use rustler::thread::is_scheduler_thread;
use rustler::OwnedEnv;
use yggdrasil_brokers::{Delivery, Event, EventSink};

use super::terms::message;
use crate::pid::Pid;

pub(super) type Events = Delivery<Pid>;

/// A publish reply is sent to its caller at once, from the runtime thread
/// that produced it: one `enif_send` from an owned environment, which any
/// thread outside the VM may do, instead of a hand-off that wakes the
/// delivery thread on the path a publisher waits on. The caller is the only
/// process that event goes to, so no order between it and the thread's
/// events can matter. Everything else goes through the delivery thread, in
/// the order the client produced it.
#[derive(Clone)]
pub(super) struct Outbox(Sender<Events>);

impl EventSink<Pid> for Outbox {
    fn deliver(&self, delivery: Events) {
        // A reply dropped on a VM thread (a client closed from a NIF) takes
        // the delivery thread: owned environments cannot send from there.
        let direct = matches!(delivery.event, Event::Published { .. }) && !is_scheduler_thread();
        let left = if direct {
            send_here(delivery)
        } else {
            Some(delivery)
        };
        if let Some(delivery) = left {
            // A dropped receiver means nobody listens any more.
            let _ = self.0.send(delivery);
        }
    }
}

/// Sends `delivery` from this thread's own environment; gives it back when
/// the thread cannot (its locals are being destroyed as it exits).
fn send_here(delivery: Events) -> Option<Events> {
    let mut delivery = Some(delivery);
    let _ = REPLY_ENV.try_with(|env| {
        if let Ok(mut env) = env.try_borrow_mut() {
            if let Some(delivery) = delivery.take() {
                send_from(&mut env, delivery);
            }
        }
    });
    delivery
}

thread_local! {
    /// The environment publish replies are built in, one per runtime thread.
    static REPLY_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

/// Builds the event's message in `env` and sends it. A panic while building
/// it loses that message only (the environment is replaced), never the
/// thread.
fn send_from(env: &mut OwnedEnv, delivery: Events) {
    let sent = catch_unwind(AssertUnwindSafe(|| {
        // A dead recipient is not an error: its events just go nowhere.
        let _ = env.send_and_clear(&delivery.to.local(), |env| message(env, delivery.event));
    }));
    if sent.is_err() {
        *env = OwnedEnv::new();
    }
}

/// The sending end every client gets; the delivery thread owns the
/// receiving end. Created with the first client, so a VM that never opens a
/// broker has no such thread.
static OUTBOX: LazyLock<Result<Outbox, String>> = LazyLock::new(|| {
    let (sender, receiver) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("yggdrasil-delivery".into())
        .spawn(move || deliver_forever(receiver))
        .map(|_| Outbox(sender))
        .map_err(|e| format!("cannot start the broker delivery thread: {e}"))
});

pub(super) fn outbox() -> Result<Outbox, String> {
    OUTBOX.as_ref().cloned().map_err(Clone::clone)
}

/// Runs for the life of the VM (the static sender never drops).
fn deliver_forever(receiver: Receiver<Events>) {
    let mut env = OwnedEnv::new();
    for delivery in receiver.iter() {
        send_from(&mut env, delivery);
    }
}
