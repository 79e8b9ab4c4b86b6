//! A workaround for the local emulator (`cargo lambda watch`, cargo-lambda 1.9.2), inert on AWS.
//!
//! The emulator's Runtime API answers the function's `POST …/invocation/{id}/response` at once,
//! before it has read the body, hands the still-streaming body to the waiting caller, and tells
//! function instances apart by their TCP connection. A large answer (hundreds of KB: a 4 500-item
//! qualifications result, a 10 000-event conversions result) is then still being written when the
//! runtime polls `…/invocation/next` again, so the runtime's HTTP client opens a second
//! connection; the emulator registers it as a new instance ("registered connection" in its debug
//! log), and now and then the answer being written on the first connection is lost: the caller
//! gets the emulator's 500 problem document (or, once, no answer at all) although the function
//! logged a complete answer.
//!
//! [`SettleLayer`] gives the answer's connection time to finish before the runtime polls again:
//! after an invocation whose deadline is not a real one (the emulator's signature: it sends a
//! fixed `600000`, a moment in 1970, where Lambda always gives the function's timeout), it waits
//! `ADSYNC_LOCAL_RESPONSE_SETTLE_MS` (default 100; 0 turns it off). On Lambda the deadline is
//! always real, so nothing waits there.

use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{Error, LambdaInvocation};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Adds [`Settle`] around the runtime's service (handler and answer).
#[derive(Clone, Copy, Debug)]
pub struct SettleLayer {
    pause: Duration,
}

impl SettleLayer {
    /// `pause`: `ADSYNC_LOCAL_RESPONSE_SETTLE_MS` (default 100 ms, `crate::settings::LocalSettings`).
    pub fn new(pause: Duration) -> Self {
        Self { pause }
    }
}

impl<S> Layer<S> for SettleLayer {
    type Service = Settle<S>;
    fn layer(&self, inner: S) -> Settle<S> {
        Settle {
            inner,
            pause: self.pause,
        }
    }
}

/// Waits after an emulated invocation's answer has been handed over (see the module doc).
#[derive(Clone, Debug)]
pub struct Settle<S> {
    inner: S,
    pause: Duration,
}

/// True when the invocation's deadline cannot be Lambda's (already past, or less than a second
/// ahead at the start): the emulator's.
pub fn emulated(deadline_ms: u64, now_ms: u64) -> bool {
    deadline_ms <= now_ms + 1_000
}

impl<S> Service<LambdaInvocation> for Settle<S>
where
    S: Service<LambdaInvocation, Response = (), Error = Error>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inv: LambdaInvocation) -> Self::Future {
        let pause = if emulated(inv.context.deadline, crate::clock::now_ms()) {
            self.pause
        } else {
            Duration::ZERO
        };
        let answered = self.inner.call(inv);
        Box::pin(async move {
            let r = answered.await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_emulators_deadline_counts_as_emulated() {
        let now = 1_800_000_000_000;
        // cargo lambda watch sends a fixed 600000 (epoch ms, 1970).
        assert!(emulated(600_000, now));
        assert!(emulated(now + 500, now));
        // Lambda: the function's timeout ahead (at least 10 s for adsync).
        assert!(!emulated(now + 10_000, now));
    }
}
