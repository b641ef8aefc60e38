//! Bounds on one locate: a wall-clock budget checked between steps, and caps on how many
//! candidates a scan collects. A file built to make the scans slow (millions of `ssl_lib.cc`
//! strings or references to them) is refused with [`OverBudget`] instead of stalling the
//! daemon.

use std::time::{Duration, Instant};

/// Most `.../ssl/ssl_lib.cc` strings a file may hold (real builds have one or two).
pub const MAX_STRINGS: usize = 16;
/// Most instructions referencing those strings (real builds have a few hundred).
pub const MAX_REFERENCES: usize = 4096;

/// A locate went over its time budget or a candidate cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct OverBudget {
    /// Which bound, and where.
    pub what: String,
}

/// The time one locate may take, from its start.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    started: Instant,
    limit: Duration,
}

impl Budget {
    /// A budget of `limit` from now.
    #[must_use]
    pub fn new(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            limit,
        }
    }

    /// A budget that never runs out (for tests of the pure parts).
    #[must_use]
    pub fn unlimited() -> Self {
        Self::new(Duration::MAX)
    }

    /// `Err` once the budget is spent; `stage` names the step for the error.
    ///
    /// # Errors
    /// [`OverBudget`] when more than the limit has elapsed.
    pub fn check(&self, stage: &str) -> Result<(), OverBudget> {
        let elapsed = self.started.elapsed();
        if elapsed > self.limit {
            return Err(OverBudget {
                what: format!(
                    "locate took longer than its {} ms budget ({} ms, at {stage})",
                    self.limit.as_millis(),
                    elapsed.as_millis()
                ),
            });
        }
        Ok(())
    }

    /// `Err` when `count` candidates of `what` exceed `max`.
    ///
    /// # Errors
    /// [`OverBudget`] when `count > max`.
    pub fn cap(count: usize, max: usize, what: &str) -> Result<(), OverBudget> {
        if count > max {
            return Err(OverBudget {
                what: format!("more than {max} {what} (a real build has far fewer)"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_says_so() {
        let budget = Budget::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        let err = budget.check("scan").unwrap_err();
        assert!(err.what.contains("0 ms budget"), "{err}");
        assert!(Budget::unlimited().check("scan").is_ok());
        assert!(Budget::cap(17, MAX_STRINGS, "strings").is_err());
        assert!(Budget::cap(16, MAX_STRINGS, "strings").is_ok());
    }
}
