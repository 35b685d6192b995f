//! The hub: which devices of which users are connected to this node, and the live path to them.
//!
//! The committer publishes every inbox entry after it is on disk. Each connected device has a
//! bounded queue; publishing never blocks. When a device's queue is full the entry is dropped and
//! the device is marked lagged: its session then reads the missing entries from storage, so a slow
//! device costs memory only up to its queue and never loses anything.
//!
//! Ephemeral events (typing) take a second, smaller queue per device ([`Hub::notify`]). They are
//! not stored anywhere, so a full queue simply sheds them: they expire on the client anyway.
//!
//! Both queues are plain deques behind the device's [`Signals`], woken through its `Notify`: an
//! empty deque holds no memory, where a channel per queue cost every idle connection about 2 KB.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chat_proto::store::InboxEntry;
use chat_proto::v1::ServerFrame;
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// A live inbox entry on its way to a device.
#[derive(Debug, Clone)]
pub struct Push {
    pub seq: u64,
    pub entry: Arc<InboxEntry>,
}

struct Subscriber {
    id: u64,
    device: String,
    signals: Arc<Signals>,
}

/// What the hub hands one session: its two queues, out-of-band signals, and the `Notify` that
/// wakes the session for any of them.
#[derive(Default)]
pub struct Signals {
    /// Entries were dropped because the queue was full: read from storage.
    pub lagged: AtomicBool,
    /// The highest seq dropped: catching up must not end before it has been sent.
    pub max_dropped: AtomicU64,
    /// A newer connection of the same device took over: close this one.
    pub replaced: AtomicBool,
    /// The ring changed and this user's home may be another node: check the route.
    pub moved: AtomicBool,
    pub notify: Notify,
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    entries: VecDeque<Push>,
    /// At most this many entries (then the device lags).
    max_entries: usize,
    /// Ephemeral events (typing, presence), already in their final form.
    notices: VecDeque<Arc<ServerFrame>>,
    max_notices: usize,
}

/// Above this capacity an emptied queue gives its memory back (after a burst).
const KEEP_CAPACITY: usize = 16;

fn pop<T>(q: &mut VecDeque<T>) -> Option<T> {
    let item = q.pop_front();
    if q.is_empty() && q.capacity() > KEEP_CAPACITY {
        *q = VecDeque::new();
    }
    item
}

impl Signals {
    fn new(max_entries: usize, max_notices: usize) -> Signals {
        Signals {
            queues: Mutex::new(Queues {
                max_entries,
                max_notices,
                ..Queues::default()
            }),
            ..Signals::default()
        }
    }

    /// Queues a live entry and wakes the session; false (nothing queued) when the queue is full.
    fn push_entry(&self, push: Push) -> bool {
        let mut q = self.queues.lock().expect("queues lock");
        if q.entries.len() >= q.max_entries {
            return false;
        }
        q.entries.push_back(push);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Queues an ephemeral event and wakes the session; false (shed) when the queue is full.
    pub fn push_notice(&self, frame: Arc<ServerFrame>) -> bool {
        let mut q = self.queues.lock().expect("queues lock");
        if q.notices.len() >= q.max_notices {
            return false;
        }
        q.notices.push_back(frame);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// The oldest queued live entry.
    pub fn pop_entry(&self) -> Option<Push> {
        pop(&mut self.queues.lock().expect("queues lock").entries)
    }

    /// The oldest queued ephemeral event.
    pub fn pop_notice(&self) -> Option<Arc<ServerFrame>> {
        pop(&mut self.queues.lock().expect("queues lock").notices)
    }
}

pub struct Hub {
    shards: Vec<Mutex<HashMap<String, Vec<Subscriber>>>>,
    next_id: AtomicU64,
    queue: usize,
    notice_queue: usize,
}

/// A device's subscription; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    user: String,
    id: u64,
    /// Its queues and signals; also where what addresses this connection rather than the user
    /// goes (the presence changes of the users it watches).
    pub signals: Arc<Signals>,
}

impl Hub {
    /// `queue`: live entries per device; `notice_queue`: ephemeral events per device.
    pub fn new(queue: usize, notice_queue: usize) -> Arc<Hub> {
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            queue,
            notice_queue,
        })
    }

    fn shard(&self, user: &str) -> &Mutex<HashMap<String, Vec<Subscriber>>> {
        &self.shards[(chat_ring::key_hash(user) % SHARDS as u64) as usize]
    }

    /// Registers a device. Any older connection of the same device is told it was replaced.
    pub fn subscribe(self: &Arc<Self>, user: &str, device: &str) -> Subscription {
        let signals = Arc::new(Signals::new(self.queue, self.notice_queue));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(user).lock().expect("hub lock");
        let subs = shard.entry(user.to_string()).or_default();
        for old in subs.iter().filter(|s| s.device == device) {
            old.signals.replaced.store(true, Ordering::Release);
            old.signals.notify.notify_one();
        }
        subs.push(Subscriber {
            id,
            device: device.to_string(),
            signals: signals.clone(),
        });
        Subscription {
            hub: self.clone(),
            user: user.to_string(),
            id,
            signals,
        }
    }

    /// Hands a committed entry to every connected device of `user`.
    pub fn publish(&self, user: &str, seq: u64, entry: Arc<InboxEntry>) {
        let shard = self.shard(user).lock().expect("hub lock");
        let Some(subs) = shard.get(user) else {
            return;
        };
        for s in subs {
            let push = Push {
                seq,
                entry: entry.clone(),
            };
            if !s.signals.push_entry(push) {
                s.signals.max_dropped.fetch_max(seq, Ordering::AcqRel);
                s.signals.lagged.store(true, Ordering::Release);
                s.signals.notify.notify_one();
            }
        }
    }

    /// Whether any device of `user` is connected here.
    pub fn is_connected(&self, user: &str) -> bool {
        self.shard(user)
            .lock()
            .expect("hub lock")
            .contains_key(user)
    }

    /// Hands an ephemeral event to every connected device of `user`; returns how many took it.
    /// A device whose queue is full misses it (counted as shed, `kind`).
    pub fn notify(&self, user: &str, frame: &Arc<ServerFrame>, kind: &'static str) -> usize {
        let shard = self.shard(user).lock().expect("hub lock");
        let Some(subs) = shard.get(user) else {
            return 0;
        };
        let mut reached = 0;
        for s in subs {
            if s.signals.push_notice(frame.clone()) {
                reached += 1;
            } else {
                metrics::counter!(crate::admin::SHED, "kind" => kind, "reason" => "device_queue_full")
                    .increment(1);
            }
        }
        reached
    }

    /// Tells every session of the connected users `moved` picks that its user may have moved;
    /// returns how many users it picked. One pass over the connected users per ring change,
    /// instead of every session waking to check its own.
    pub fn signal_moved(&self, moved: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let shard = shard.lock().expect("hub lock");
            for (user, subs) in shard.iter() {
                if !moved(user) {
                    continue;
                }
                n += 1;
                for s in subs {
                    s.signals.moved.store(true, Ordering::Release);
                    s.signals.notify.notify_one();
                }
            }
        }
        n
    }

    /// Connected devices.
    #[cfg(test)]
    pub fn connected(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .expect("hub lock")
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut shard = self.hub.shard(&self.user).lock().expect("hub lock");
        if let Some(subs) = shard.get_mut(&self.user) {
            subs.retain(|s| s.id != self.id);
            if subs.is_empty() {
                shard.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<InboxEntry> {
        Arc::new(InboxEntry::default())
    }

    #[tokio::test]
    async fn full_queue_marks_lagged_instead_of_blocking() {
        let hub = Hub::new(2, 2);
        let sub = hub.subscribe("bob", "phone");
        for seq in 1..=5 {
            hub.publish("bob", seq, entry());
        }
        assert!(sub.signals.lagged.load(Ordering::Acquire));
        assert_eq!(sub.signals.max_dropped.load(Ordering::Acquire), 5);
        // The session was woken for them.
        sub.signals.notify.notified().await;
        assert_eq!(sub.signals.pop_entry().unwrap().seq, 1);
        assert_eq!(sub.signals.pop_entry().unwrap().seq, 2);
        assert!(sub.signals.pop_entry().is_none());
    }

    #[tokio::test]
    async fn same_device_replaces_and_drop_unsubscribes() {
        let hub = Hub::new(8, 8);
        let first = hub.subscribe("bob", "phone");
        let _other = hub.subscribe("bob", "laptop");
        assert!(!first.signals.replaced.load(Ordering::Acquire));
        let second = hub.subscribe("bob", "phone");
        assert!(first.signals.replaced.load(Ordering::Acquire));
        assert!(!second.signals.replaced.load(Ordering::Acquire));
        assert_eq!(hub.connected(), 3);
        drop(first);
        drop(second);
        assert_eq!(hub.connected(), 1);
    }

    #[tokio::test]
    async fn events_reach_every_device_and_a_full_queue_sheds_instead_of_blocking() {
        let hub = Hub::new(8, 2);
        let phone = hub.subscribe("bob", "phone");
        let laptop = hub.subscribe("bob", "laptop");
        let frame = Arc::new(ServerFrame::default());
        assert_eq!(hub.notify("bob", &frame, "typing"), 2);
        assert_eq!(hub.notify("carol", &frame, "typing"), 0, "not connected");
        assert!(laptop.signals.pop_notice().is_some());
        // The phone does not read: its queue of 2 fills and the third event is shed.
        assert_eq!(hub.notify("bob", &frame, "typing"), 2);
        assert_eq!(hub.notify("bob", &frame, "typing"), 1);
        for _ in 0..2 {
            assert!(phone.signals.pop_notice().is_some());
        }
        assert!(phone.signals.pop_notice().is_none());
        assert!(
            !phone.signals.lagged.load(Ordering::Acquire),
            "events never send a device back to storage"
        );
    }

    #[test]
    fn only_the_sessions_of_moved_users_are_signalled() {
        let hub = Hub::new(8, 8);
        let alice = hub.subscribe("alice", "phone");
        let bob = [
            hub.subscribe("bob", "phone"),
            hub.subscribe("bob", "laptop"),
        ];
        assert_eq!(hub.signal_moved(|u| u == "bob"), 1);
        assert!(!alice.signals.moved.load(Ordering::Acquire));
        assert!(bob.iter().all(|s| s.signals.moved.load(Ordering::Acquire)));
        assert_eq!(hub.signal_moved(|u| u == "carol"), 0, "not connected");
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn an_emptied_queue_gives_its_memory_back_after_a_burst() {
        let s = Signals::new(1000, 10);
        for seq in 0..100 {
            assert!(s.push_entry(Push {
                seq,
                entry: Arc::new(InboxEntry::default()),
            }));
        }
        let got: Vec<u64> = std::iter::from_fn(|| s.pop_entry())
            .map(|p| p.seq)
            .collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "in order");
        assert_eq!(s.queues.lock().unwrap().entries.capacity(), 0);
    }
}
