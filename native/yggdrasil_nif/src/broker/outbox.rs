//! Where every broker client's events go, and the one thread that sends
//! most of them.
//!
//! Subscriber events, connection states and warnings go through one bounded
//! [`yggdrasil_brokers::Outbox`] shared by every client (each with its own
//! caps and counts, see [`Sink::load`]) and leave it on ONE delivery thread
//! (`yggdrasil-delivery`, a plain `std::thread`): no scheduler ever waits on
//! a broker or sends its traffic, and the events for one recipient keep the
//! order the client produced. The outbox sheds load when this thread falls
//! behind (with `Disconnected`/`Connected` around the gap: see its docs).
//! Events of a [`Target::Direct`] are fanned out to the channel's
//! subscribers from here (`direct.rs`); the others become messages to a
//! process. Publish replies skip the thread (see [`Sink`]).
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock};

use rustler::thread::is_scheduler_thread;
use rustler::OwnedEnv;
use yggdrasil_brokers::outbox::{self, Deliveries, Flow, Limits, LoadStats, Outbox};
use yggdrasil_brokers::{Delivery, Event, EventSink, Name};

use super::direct::{self, Target};
use super::pace::Pace;
use super::terms::message;
use crate::pid::Pid;

pub(super) type Events = Delivery<Target>;

/// One client's way into the outbox.
///
/// A publish reply is sent to its caller at once, from the runtime thread
/// that produced it: one `enif_send` from an owned environment, which any
/// thread outside the VM may do, instead of a hand-off that wakes the
/// delivery thread on the path a publisher waits on. The caller is the only
/// process that event goes to, so no order between it and the thread's
/// events can matter.
#[derive(Clone)]
pub(super) struct Sink(Outbox<Target>);

impl Sink {
    /// What this client has queued and what it shed.
    pub(super) fn load(&self) -> LoadStats {
        self.0.load()
    }

    pub(super) fn count_shed(&self, dropped: u64) {
        self.0.count_shed(dropped)
    }
}

impl EventSink<Target> for Sink {
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
            self.0.deliver(delivery);
        }
    }

    fn flow(&self, to: Target, name: Name) -> Arc<Flow<Target>> {
        self.0.flow(to, name)
    }

    fn flow_gap(&self, flow: &Arc<Flow<Target>>) {
        self.0.flow_gap(flow)
    }

    fn flow_event(&self, flow: &Arc<Flow<Target>>, event: Event) {
        self.0.flow_event(flow, event)
    }
}

/// Sends `delivery` from this thread's own environment; gives it back when
/// the thread cannot (its locals are being destroyed as it exits).
fn send_here(delivery: Events) -> Option<Events> {
    let mut delivery = Some(delivery);
    let _ = REPLY_ENV.try_with(|env| {
        if let Ok(mut env) = env.try_borrow_mut() {
            if let Some(Delivery { to, event }) = delivery.take() {
                send_from(&mut env, to.pid(), event);
            }
        }
    });
    delivery
}

thread_local! {
    /// The environment publish replies are built in, one per runtime thread.
    static REPLY_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

/// Builds the event's message in `env` and sends it to `pid`. A panic
/// while building it loses that message only (the environment is
/// replaced), never the thread.
fn send_from(env: &mut OwnedEnv, pid: Pid, event: Event) {
    let sent = catch_unwind(AssertUnwindSafe(|| {
        // A dead recipient is not an error: its events just go nowhere.
        let _ = env.send_and_clear(&pid.local(), |env| message(env, event));
    }));
    if sent.is_err() {
        *env = OwnedEnv::new();
    }
}

/// The outbox every client's [`Sink`] feeds; the delivery thread owns its
/// other end. Created with the first client, so a VM that never opens a
/// broker has no such thread.
static OUTBOX: LazyLock<Result<Outbox<Target>, String>> = LazyLock::new(|| {
    let (outbox, deliveries) = outbox::channel(Limits::default());
    std::thread::Builder::new()
        .name("yggdrasil-delivery".into())
        .spawn(move || deliver_forever(deliveries))
        .map(|_| outbox)
        .map_err(|e| format!("cannot start the broker delivery thread: {e}"))
});

/// A new client's sink: its own caps and counts in the shared outbox.
pub(super) fn sink() -> Result<Sink, String> {
    match OUTBOX.as_ref() {
        Ok(outbox) => Ok(Sink(outbox.for_client())),
        Err(e) => Err(e.clone()),
    }
}

/// Runs for the life of the VM (the static outbox never drops).
fn deliver_forever(deliveries: Deliveries<Target>) {
    let mut env = OwnedEnv::new();
    let mut pace = Pace::default();
    for Delivery { to, event } in deliveries {
        let event = match &to {
            Target::Direct(route) => {
                let done = catch_unwind(AssertUnwindSafe(|| {
                    direct::deliver(&mut env, &mut pace, route, event)
                }));
                match done {
                    Ok(left) => left,
                    Err(_) => {
                        env = OwnedEnv::new();
                        None
                    }
                }
            }
            Target::Process(_) => Some(event),
        };
        if let Some(event) = event {
            send_from(&mut env, to.pid(), event);
        }
    }
}
