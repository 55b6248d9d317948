//! When a failed task is tried again. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retries after 5 s, 20 s, then every 60 s, up to `max_retries` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// The delay before retry `n` (0-based) is `delays[n]`, or the last one past the end.
    pub delays: Vec<Duration>,
    /// How many times a task is retried after its first attempt; 0 fails it at once.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(20),
                Duration::from_secs(60),
            ],
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// Five retries take about 3.5 minutes: long enough for a node restart, short enough that a
/// real problem surfaces while someone is looking.
pub const DEFAULT_MAX_RETRIES: u32 = 5;

/// What to do with a task whose attempt just failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RetryIn(Duration),
    GiveUp,
}

impl RetryPolicy {
    pub fn with_max_retries(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            ..RetryPolicy::default()
        }
    }

    /// After a failure of a task that has been retried `retries_so_far` times.
    pub fn after_failure(&self, retries_so_far: u32) -> AfterFailure {
        if retries_so_far >= self.max_retries {
            return AfterFailure::GiveUp;
        }
        let index = (retries_so_far as usize).min(self.delays.len().saturating_sub(1));
        AfterFailure::RetryIn(self.delays.get(index).copied().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_five_twenty_then_every_sixty_seconds() {
        let policy = RetryPolicy::with_max_retries(6);
        let delays: Vec<AfterFailure> = (0..7).map(|n| policy.after_failure(n)).collect();
        let secs = |s| AfterFailure::RetryIn(Duration::from_secs(s));
        assert_eq!(
            delays,
            vec![
                secs(5),
                secs(20),
                secs(60),
                secs(60),
                secs(60),
                secs(60),
                AfterFailure::GiveUp
            ]
        );
    }

    #[test]
    fn zero_retries_gives_up_at_once() {
        assert_eq!(
            RetryPolicy::with_max_retries(0).after_failure(0),
            AfterFailure::GiveUp
        );
        assert_eq!(RetryPolicy::default().max_retries, DEFAULT_MAX_RETRIES);
    }

    #[test]
    fn no_delays_means_retry_at_once() {
        let policy = RetryPolicy {
            delays: Vec::new(),
            max_retries: 1,
        };
        assert_eq!(
            policy.after_failure(0),
            AfterFailure::RetryIn(Duration::ZERO)
        );
    }
}
