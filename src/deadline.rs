//! The deadline of one protocol call, shared by the server (which answers
//! dockerd) and the call's transaction (which decides whether to commit).
//!
//! A call either answers in time or leaves nothing behind. The boundary is one
//! atomic verdict that both sides race for:
//! - the transaction claims it (`claim_commit`) just before committing, and
//!   only while at least `margin` remains before the answer is due;
//! - the server claims it (`abandon`) when the answer is due and the call has
//!   not finished.
//!
//! Whoever claims first wins. A call that claimed the commit is waited for
//! (its commit is one local store transaction, and `margin` leaves room for
//! it), and its answer is the truth. A call the server abandoned sees that at
//! its commit point, commits nothing and undoes its kernel steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const OPEN: u8 = 0;
const COMMITTING: u8 = 1;
const ABANDONED: u8 = 2;

/// A call commits only while this much (at most) remains before its answer
/// is due: room for one store transaction and the answer.
pub const MAX_COMMIT_MARGIN: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct CallDeadline {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// None: no deadline (in-process callers such as tests and the fixture replay).
    answer_by: Option<Instant>,
    margin: Duration,
    verdict: AtomicU8,
}

tokio::task_local! {
    static CURRENT: CallDeadline;
}

impl CallDeadline {
    /// The answer is due `limit` from now; commits stop `margin` before that.
    pub fn new(limit: Duration, margin: Duration) -> CallDeadline {
        CallDeadline::build(Some(Instant::now() + limit), margin)
    }

    /// The call's own limit with the margin the plugin uses for it: a tenth of
    /// the limit, at most [`MAX_COMMIT_MARGIN`].
    pub fn for_call(limit: Duration) -> CallDeadline {
        CallDeadline::new(limit, (limit / 10).min(MAX_COMMIT_MARGIN))
    }

    pub fn unbounded() -> CallDeadline {
        CallDeadline::build(None, Duration::ZERO)
    }

    fn build(answer_by: Option<Instant>, margin: Duration) -> CallDeadline {
        CallDeadline { inner: Arc::new(Inner { answer_by, margin, verdict: AtomicU8::new(OPEN) }) }
    }

    /// The deadline of the call running in this task (set by the server), or none.
    pub fn current() -> CallDeadline {
        CURRENT.try_with(Clone::clone).unwrap_or_else(|_| CallDeadline::unbounded())
    }

    /// Runs `work` as this call: transactions inside it obey this deadline.
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// Time left before the answer is due (None: no deadline).
    pub fn until_answer(&self) -> Option<Duration> {
        self.inner.answer_by.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Time left for work that must end before the commit point (None: no deadline).
    pub fn until_commit(&self) -> Option<Duration> {
        self.until_answer().map(|left| left.saturating_sub(self.inner.margin))
    }

    /// Why the call may not go on, if it may not: the server gave up on it,
    /// or too little time remains to commit before the answer is due.
    pub fn expired(&self) -> Option<String> {
        if self.inner.verdict.load(Ordering::SeqCst) == ABANDONED {
            return Some("the answer was already due (dockerd was told the call failed)".into());
        }
        match self.until_commit() {
            Some(left) if left.is_zero() => {
                Some(format!("less than {} ms left before the answer is due", self.inner.margin.as_millis()))
            }
            _ => None,
        }
    }

    /// The transaction's side of the race: true when it may commit. After
    /// this, the server waits for the call's own answer.
    pub fn claim_commit(&self) -> bool {
        if self.expired().is_some() {
            return false;
        }
        self.inner.verdict.compare_exchange(OPEN, COMMITTING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// The server's side of the race: true when the call will commit nothing
    /// (it had not claimed its commit); false when it is committing.
    pub fn abandon(&self) -> bool {
        match self.inner.verdict.compare_exchange(OPEN, ABANDONED, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => true,
            Err(now) => now == ABANDONED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_commit_cannot_be_abandoned_and_the_other_way_round() {
        let d = CallDeadline::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(d.claim_commit());
        assert!(!d.abandon(), "a committing call is waited for");

        let d = CallDeadline::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(d.abandon());
        assert!(!d.claim_commit(), "an abandoned call commits nothing");
        assert!(d.expired().unwrap().contains("already due"));
    }

    #[test]
    fn no_commit_inside_the_margin() {
        let d = CallDeadline::new(Duration::from_millis(500), Duration::from_secs(1));
        assert_eq!(d.until_commit(), Some(Duration::ZERO));
        assert!(d.expired().unwrap().contains("1000 ms"));
        assert!(!d.claim_commit());
        // The server may still abandon it: nothing was claimed.
        assert!(d.abandon());
    }

    #[test]
    fn unbounded_calls_always_commit() {
        let d = CallDeadline::unbounded();
        assert_eq!(d.until_commit(), None);
        assert!(d.expired().is_none());
        assert!(d.claim_commit());
    }

    #[test]
    fn margin_is_a_tenth_of_short_limits() {
        let d = CallDeadline::for_call(Duration::from_secs(5));
        assert_eq!(d.inner.margin, Duration::from_millis(500));
        let d = CallDeadline::for_call(Duration::from_secs(60));
        assert_eq!(d.inner.margin, MAX_COMMIT_MARGIN);
    }

    #[tokio::test]
    async fn the_current_deadline_is_the_scoped_one() {
        assert!(CallDeadline::current().until_answer().is_none());
        let d = CallDeadline::new(Duration::from_secs(10), Duration::ZERO);
        let seen = d.clone().scope(async { CallDeadline::current().until_answer() }).await;
        assert!(seen.is_some_and(|left| left <= Duration::from_secs(10)));
    }
}
