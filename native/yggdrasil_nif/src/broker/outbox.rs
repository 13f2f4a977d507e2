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
//! process. Publish replies skip the thread, and so do a narrow route's
//! messages when nothing of theirs is waiting (see [`Sink`]).
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock};

use rustler::thread::is_scheduler_thread;
use rustler::OwnedEnv;
use yggdrasil_brokers::outbox::{self, Deliveries, Flow, Limits, LoadStats, Outbox};
use yggdrasil_brokers::{Delivery, Event, EventSink, Name};

use super::direct::{self, Target};
use super::pace::{self, Pace};
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
///
/// A message for a route that is not wide is delivered the same way, by
/// the runtime thread (*express*), when its flow is idle (nothing of its
/// client queued or being delivered, so it overtakes nothing the client
/// produced before, a warning to the owner included) and the pace budget
/// has room (express sends are paced with the thread's). Otherwise it is
/// queued: notices, messages for more than a few subscribers (see
/// `direct.rs`) or over [`EXPRESS_MAX_BYTES`], and a client's messages
/// while the delivery thread has any of its items or paces, which under a
/// flood is where the outbox sheds.
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
        let left = match flow.to() {
            Target::Direct(route) if flow.is_idle() && expressible(route, &event) => {
                express(route, event)
            }
            _ => Some(event),
        };
        if let Some(event) = left {
            self.0.flow_event(flow, event)
        }
    }
}

/// A message bigger than this waits for the delivery thread even when its
/// flow is idle: decoding and copying it on the runtime thread would hold
/// up every client's socket reads.
const EXPRESS_MAX_BYTES: usize = 4096;

fn expressible(route: &Arc<direct::Route>, event: &Event) -> bool {
    let Event::Message { payload, .. } = event else {
        return false;
    };
    payload.len() <= EXPRESS_MAX_BYTES
        && !route.is_wide()
        && pace::has_room()
        && !is_scheduler_thread()
}

/// Delivers a route's message from this thread; gives it back when it
/// cannot (`direct::deliver` declined it, or no environment).
fn express(route: &Arc<direct::Route>, event: Event) -> Option<Event> {
    let mut declined = None;
    let left = with_here_env(event, |env, event| {
        declined = guarded(env, |env| direct::deliver(env, Pace::Express, route, event)).err();
    });
    left.or(declined)
}

/// Sends `delivery` from this thread's own environment; gives it back when
/// the thread cannot.
fn send_here(delivery: Events) -> Option<Events> {
    with_here_env(delivery, |env, Delivery { to, event }| {
        send_from(env, to.pid(), event)
    })
}

/// Runs `f` on `x` with this thread's own environment; gives `x` back when
/// the thread has none to lend (its locals are being destroyed as it
/// exits, or `f` is already running on it).
fn with_here_env<T>(x: T, f: impl FnOnce(&mut OwnedEnv, T)) -> Option<T> {
    let mut x = Some(x);
    let _ = HERE_ENV.try_with(|env| {
        if let Ok(mut env) = env.try_borrow_mut() {
            if let Some(x) = x.take() {
                f(&mut env, x);
            }
        }
    });
    x
}

thread_local! {
    /// The environment a runtime thread builds what it sends itself in:
    /// publish replies and express messages.
    static HERE_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
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
    for Delivery { to, event } in deliveries {
        deliver_from(&mut env, Pace::Waits, to, event);
    }
}

/// Delivers `event` to `to` from `env`: a route's fan-out (what it cannot
/// decode goes to the channel's process), or a message to a process. A
/// panic loses that event only (the environment is replaced).
fn deliver_from(env: &mut OwnedEnv, pace: Pace, to: Target, event: Event) {
    let left = match &to {
        Target::Direct(route) => guarded(env, |env| direct::deliver(env, pace, route, event)),
        Target::Process(_) => Err(event),
    };
    if let Err(event) = left {
        send_from(env, to.pid(), event);
    }
}

/// `deliver` with `env`, where a panic loses the event (`Ok`) and replaces
/// the environment, never the thread.
fn guarded(
    env: &mut OwnedEnv,
    deliver: impl FnOnce(&mut OwnedEnv) -> Result<(), Event>,
) -> Result<(), Event> {
    match catch_unwind(AssertUnwindSafe(|| deliver(&mut *env))) {
        Ok(result) => result,
        Err(_) => {
            *env = OwnedEnv::new();
            Ok(())
        }
    }
}
