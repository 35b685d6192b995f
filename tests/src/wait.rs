//! The one polling helper. Every wait in the suite has a deadline and names what it waited for,
//! so a test on a busy machine fails with a reason instead of hanging.

use std::fmt;
use std::time::{Duration, Instant};

/// Between two polls: short next to the waits, long enough that polling (often an HTTP request
/// or a `chatctl` process) does not load a busy 2-core machine.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a probe answers: done, with a value, or not yet, with (for some answers) what it saw,
/// which a timeout reports.
pub trait Probe {
    type Out;
    fn done(self) -> Result<Self::Out, Option<String>>;
}

impl Probe for bool {
    type Out = ();
    fn done(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Probe for Option<T> {
    type Out = T;
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` is "not yet", with the state seen, which a timeout reports.
impl<T, E: fmt::Display> Probe for Result<T, E> {
    type Out = T;
    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// A wait that ran out of time. Its message names what was awaited and the last state seen.
#[derive(Debug)]
pub struct TimedOut {
    pub what: String,
    pub after: Duration,
    pub last: Option<String>,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "waited {:?} for {}", self.after, self.what)?;
        if let Some(last) = &self.last {
            write!(f, "; last seen: {last}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TimedOut {}

/// One wait's deadline, and what it says when it passes.
struct Deadline<'a> {
    what: &'a str,
    timeout: Duration,
    at: Instant,
}

impl<'a> Deadline<'a> {
    fn new(what: &'a str, timeout: Duration) -> Deadline<'a> {
        Deadline {
            what,
            timeout,
            at: Instant::now() + timeout,
        }
    }

    /// The wait's result once `answer` is done or the deadline passed; `None`: poll again.
    fn settle<P: Probe>(&self, answer: P) -> Option<Result<P::Out, TimedOut>> {
        match answer.done() {
            Ok(v) => Some(Ok(v)),
            Err(last) if Instant::now() >= self.at => Some(Err(TimedOut {
                what: self.what.to_string(),
                after: self.timeout,
                last,
            })),
            Err(_) => None,
        }
    }
}

/// Polls `probe` (blocking the thread between polls) until it is done or `timeout` has passed.
/// Callers `unwrap` the result, or add what helps to debug (node logs) to the panic.
pub fn wait_until<P: Probe>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> P,
) -> Result<P::Out, TimedOut> {
    let deadline = Deadline::new(what, timeout);
    loop {
        if let Some(r) = deadline.settle(probe()) {
            return r;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`wait_until`] for probes that await (etcd requests); sleeps without blocking the runtime.
pub async fn wait_until_async<P: Probe>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> Result<P::Out, TimedOut> {
    let deadline = Deadline::new(what, timeout);
    loop {
        if let Some(r) = deadline.settle(probe().await) {
            return r;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_done_answer() {
        let mut n = 0;
        let got = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn a_timeout_names_the_wait_and_the_last_state() {
        let e = wait_until("never", Duration::ZERO, || Err::<(), _>("still 7")).unwrap_err();
        assert_eq!(e.to_string(), "waited 0ns for never; last seen: still 7");
        let e = wait_until("never", Duration::ZERO, || false).unwrap_err();
        assert_eq!(e.last, None);
    }

    #[tokio::test]
    async fn the_async_variant_awaits_its_probe() {
        let mut n = 0;
        let got = wait_until_async("n to reach 2", Duration::from_secs(5), async || {
            n += 1;
            n >= 2
        })
        .await;
        assert!(got.is_ok());
    }
}
