//! Runs a port's future so that neither a panic nor a hang in it can take an actor down:
//! a panic becomes a value, and a future without a sign of life for the stall timeout is
//! dropped (ports are cancel-safe by contract).

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::future::{self, BoxFuture, Either};
use futures_util::FutureExt;

use crate::ports::SyncError;
use crate::throttle::Progress;

/// How a guarded port call ended.
pub(crate) enum Guarded<T> {
    /// It returned.
    Done(Result<T, SyncError>),
    /// It panicked; the message.
    Panicked(String),
    /// It showed no progress for the stall timeout and was cancelled.
    Stalled,
}

/// Calls `start` (which may itself panic) and awaits its future under the watchdog.
pub(crate) fn guard<T: Send + 'static>(
    start: impl FnOnce() -> BoxFuture<'static, Result<T, SyncError>>,
    progress: Progress,
    stall_timeout: Duration,
) -> BoxFuture<'static, Guarded<T>> {
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(start)) {
        Ok(fut) => fut,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            return Box::pin(async move { Guarded::Panicked(message) });
        }
    };
    Box::pin(async move {
        let work = AssertUnwindSafe(fut).catch_unwind();
        let watchdog = Box::pin(stalled(progress, stall_timeout));
        match future::select(work, watchdog).await {
            Either::Left((Ok(result), _)) => Guarded::Done(result),
            Either::Left((Err(panic), _)) => Guarded::Panicked(panic_message(panic.as_ref())),
            Either::Right(((), _)) => Guarded::Stalled,
        }
    })
}

/// Resolves once `progress` has been idle for `timeout`.
async fn stalled(progress: Progress, timeout: Duration) {
    loop {
        let idle = progress.idle();
        if idle >= timeout {
            return;
        }
        tokio::time::sleep(timeout - idle).await;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_future_that_ticks_is_never_stalled() {
        let progress = Progress::new();
        let p = progress.clone();
        let out = guard(
            move || {
                Box::pin(async move {
                    for _ in 0..10 {
                        tokio::time::sleep(Duration::from_secs(50)).await;
                        p.tick();
                    }
                    Ok(7u32)
                })
            },
            progress,
            Duration::from_secs(60),
        )
        .await;
        assert!(matches!(out, Guarded::Done(Ok(7))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_future_is_cancelled_at_the_stall_timeout() {
        let start = Instant::now();
        let out = guard(
            || Box::pin(future::pending::<Result<(), SyncError>>()),
            Progress::new(),
            Duration::from_secs(60),
        )
        .await;
        assert!(matches!(out, Guarded::Stalled));
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn panics_become_values_whether_early_or_inside_the_future() {
        let early = guard::<()>(
            || panic!("at call"),
            Progress::new(),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(early, Guarded::Panicked(m) if m == "panicked: at call"));
        let inside = guard::<()>(
            || Box::pin(async { panic!("inside {}", 1) }),
            Progress::new(),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(inside, Guarded::Panicked(m) if m == "panicked: inside 1"));
    }
}
