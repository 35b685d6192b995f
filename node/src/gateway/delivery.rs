//! The delivery cursor of one connection, with no I/O: which entries go out, and when to read
//! storage instead of trusting the live queue.
//!
//! The session subscribes to the hub *before* it learns its cursor, then reads its backlog from
//! storage ("catching up") while live entries queue. A live entry is sent only if it is exactly
//! the next seq; anything older was already sent, anything newer means entries were missed and
//! the session catches up from storage again. Storage is the truth; the live queue is only a
//! shortcut. The property test below drives this against a model inbox.

/// Where a connection stands in its user's inbox.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// Highest seq sent on this connection (starts at the device's cursor).
    last_sent: u64,
    catching_up: bool,
    /// Highest live seq seen while catching up: catch-up ends only once it has been sent.
    max_seen: u64,
    /// A page read is in flight, and `max_seen` when it was requested.
    reading: bool,
    page_seen: u64,
}

impl Cursor {
    /// Starts after `sent`; catching up from storage first.
    pub(crate) fn new(sent: u64) -> Cursor {
        Cursor {
            last_sent: sent,
            catching_up: true,
            max_seen: 0,
            reading: false,
            page_seen: 0,
        }
    }

    pub(crate) fn last_sent(&self) -> u64 {
        self.last_sent
    }

    /// The seq to read a page of storage from, if one should be read now.
    pub(crate) fn page_to_read(&mut self) -> Option<u64> {
        if !self.catching_up || self.reading {
            return None;
        }
        self.reading = true;
        self.page_seen = self.max_seen;
        Some(self.last_sent + 1)
    }

    /// The live queue dropped entries, the newest being `max_dropped`: go back to storage until
    /// it is sent.
    pub(crate) fn lagged(&mut self, max_dropped: u64) {
        self.catching_up = true;
        self.max_seen = self.max_seen.max(max_dropped);
    }

    /// A live entry: whether to send it now.
    pub(crate) fn live(&mut self, seq: u64) -> bool {
        if seq <= self.last_sent {
            return false;
        }
        if self.catching_up || seq != self.last_sent + 1 {
            // Storage has it; catch up from there.
            self.catching_up = true;
            self.max_seen = self.max_seen.max(seq);
            return false;
        }
        self.last_sent = seq;
        true
    }

    /// A page read from storage (seqs in order; `full`: it may not have reached the end), and
    /// the newest entry the live queue dropped meanwhile, if any. Returns how many of the
    /// page's entries, from its end, to send (those past what was sent).
    pub(crate) fn page(&mut self, seqs: &[u64], full: bool, dropped: Option<u64>) -> usize {
        self.reading = false;
        let fresh = seqs.iter().filter(|s| **s > self.last_sent).count();
        if let Some(last) = seqs.last() {
            self.last_sent = self.last_sent.max(*last);
        }
        // Entries dropped from the live queue while this page was being read may be newer than
        // the page: account for them before deciding that storage has been read to the end.
        if let Some(d) = dropped {
            self.lagged(d);
        }
        // A page that is not full reached the end of storage. Catching up is done once it covers
        // everything seen live. An entry seen live before the read started was committed before
        // it (publish follows commit), so if such an entry is missing it has expired: waiting for
        // it would spin. One seen only during the read may be newer than the read: read again.
        if !full && (self.last_sent >= self.max_seen || self.max_seen <= self.page_seen) {
            self.catching_up = false;
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What happens next in the model: an entry commits (and is published live, or dropped from
    /// a full live queue), a page read starts, a page read returns.
    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Commit { dropped: bool },
        Deliver,
        StartRead,
        FinishRead,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            3 => any::<bool>().prop_map(|d| Ev::Commit { dropped: d }),
            3 => Just(Ev::Deliver),
            2 => Just(Ev::StartRead),
            2 => Just(Ev::FinishRead),
        ]
    }

    const PAGE: usize = 3;

    /// A connection over a model inbox: committed seqs 1..=n, a live queue, a storage read
    /// that sees what was committed when it started.
    struct Model {
        committed: u64,
        queue: std::collections::VecDeque<u64>,
        dropped: Option<u64>,
        read: Option<(u64, u64)>,
        cursor: Cursor,
        sent: Vec<u64>,
    }

    impl Model {
        fn step(&mut self, e: Ev) {
            match e {
                Ev::Commit { dropped } => {
                    self.committed += 1;
                    if dropped {
                        self.dropped = Some(self.committed);
                    } else {
                        self.queue.push_back(self.committed);
                    }
                }
                Ev::Deliver => {
                    if let Some(d) = self.dropped.take() {
                        self.cursor.lagged(d);
                    }
                    if let Some(seq) = self.queue.pop_front() {
                        if self.cursor.live(seq) {
                            self.sent.push(seq);
                        }
                    }
                }
                Ev::StartRead => {
                    if self.read.is_none() {
                        if let Some(from) = self.cursor.page_to_read() {
                            self.read = Some((from, self.committed));
                        }
                    }
                }
                Ev::FinishRead => {
                    if let Some((from, upto)) = self.read.take() {
                        let seqs: Vec<u64> = (from..=upto).take(PAGE).collect();
                        let full = seqs.len() == PAGE;
                        let n = self.cursor.page(&seqs, full, self.dropped.take());
                        self.sent.extend(&seqs[seqs.len() - n..]);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the interleaving of commits, live deliveries, drops and page reads: entries
        /// go out once each, in order, and once things go quiet every committed entry is out.
        #[test]
        fn every_entry_goes_out_once_in_order(start in 0u64..3, events in prop::collection::vec(ev(), 0..60)) {
            let mut m = Model {
                committed: start,
                queue: Default::default(),
                dropped: None,
                read: None,
                cursor: Cursor::new(0),
                sent: Vec::new(),
            };
            for e in events {
                m.step(e);
                prop_assert!(m.sent.windows(2).all(|w| w[1] == w[0] + 1), "{:?}", m.sent);
                prop_assert!(m.sent.first().is_none_or(|s| *s == 1));
            }
            // Quiet: the queue drains and reads run until the cursor stops asking.
            for _ in 0..1000 {
                m.step(Ev::Deliver);
                m.step(Ev::FinishRead);
                m.step(Ev::StartRead);
                if m.read.is_none() && m.queue.is_empty() {
                    break;
                }
            }
            let all: Vec<u64> = (1..=m.committed).collect();
            prop_assert_eq!(&m.sent, &all);
        }
    }
}
