//! Bounded exponential backoff with jitter, for every reconnect loop.
//!
//! Attempt n waits a random time in [d/2, d] with d = min(FIRST << n,
//! max): the first retry comes within ~100 ms, later ones double up to
//! `backoff_max`, and the jitter keeps many clients from reconnecting in
//! lockstep after a broker restart.
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);

pub(crate) struct Backoff {
    max: Duration,
    attempt: u32,
    rng: XorShift,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Backoff {
            max: max.max(Duration::from_millis(1)),
            attempt: 0,
            rng: XorShift::seeded(),
        }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = FIRST
            .checked_mul(1u32 << self.attempt.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.rng.next() % span.saturating_add(1))
    }

    /// After a success: the next failure retries quickly again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A tiny PRNG: jitter needs spread, not quality, so no crate for it.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        // Address of a local + time: different per client and per process.
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        XorShift((addr ^ nanos.rotate_left(17)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_within_100ms_doubles_and_stays_bounded() {
        let max = Duration::from_millis(1000);
        let mut b = Backoff::new(max);
        let first = b.next_delay();
        assert!(first <= FIRST && first >= FIRST / 2, "{first:?}");
        let second = b.next_delay();
        assert!(second <= FIRST * 2 && second >= FIRST, "{second:?}");
        for attempt in 2..100 {
            let d = b.next_delay();
            assert!(d <= max, "{d:?}");
            // 100 ms << 4 is past the 1 s bound: from then on, at the bound.
            if attempt >= 4 {
                assert!(d >= max / 2, "{d:?}");
            }
        }
        b.reset();
        assert!(b.next_delay() <= FIRST);
    }
}
