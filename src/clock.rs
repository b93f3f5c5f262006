//! Where time comes from.
//!
//! - Wall time (budget periods, reservation expiry, ledger times) through
//!   [`Clock`]: `serve` uses [`SystemClock`]; a test sets a [`ManualClock`]
//!   to the minute before midnight and moves it on.
//! - Monotonic time (TTLs, freshness, lingering) through [`Instant`],
//!   tokio's: a test on tokio's paused clock moves it with
//!   `tokio::time::advance`, instead of sleeping. Outside tokio's test
//!   clock it is the operating system's monotonic clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

pub use tokio::time::Instant;

/// The wall clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64 {
        self.now().as_millisecond()
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until it is moved.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    pub fn at(t: Timestamp) -> ManualClock {
        ManualClock {
            ms: AtomicI64::new(t.as_millisecond()),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.ms.load(Ordering::Relaxed)).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}
