//! The hub: which devices of which users are connected to this node, and the live path to them.
//!
//! The committer publishes every inbox entry after it is on disk. Each connected device has a
//! bounded queue; publishing never blocks. When a device's queue is full the entry is dropped and
//! the device is marked lagged: its session then reads the missing entries from storage, so a slow
//! device costs memory only up to its queue and never loses anything.
//!
//! Ephemeral events (typing) take a second, smaller queue per device ([`Hub::notify`]). They are
//! not stored anywhere, so a full queue simply sheds them: they expire on the client anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chat_proto::store::InboxEntry;
use chat_proto::v1::ServerFrame;
use tokio::sync::{mpsc, Notify};

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
    tx: mpsc::Sender<Push>,
    notices: mpsc::Sender<Arc<ServerFrame>>,
    signals: Arc<Signals>,
}

/// Out-of-band signals from the hub to one session.
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
    pub rx: mpsc::Receiver<Push>,
    /// Ephemeral events (typing, presence), already in their final form.
    pub notices: mpsc::Receiver<Arc<ServerFrame>>,
    /// The sending side of `notices`, for what addresses this connection rather than the user
    /// (the presence changes of the users it watches).
    pub notices_tx: mpsc::Sender<Arc<ServerFrame>>,
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
        let (tx, rx) = mpsc::channel(self.queue);
        let (notices_tx, notices) = mpsc::channel(self.notice_queue);
        let signals = Arc::new(Signals::default());
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
            tx,
            notices: notices_tx.clone(),
            signals: signals.clone(),
        });
        Subscription {
            hub: self.clone(),
            user: user.to_string(),
            id,
            rx,
            notices,
            notices_tx,
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
            if s.tx.try_send(push).is_err() {
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
            if s.notices.try_send(frame.clone()).is_ok() {
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
        let mut sub = hub.subscribe("bob", "phone");
        for seq in 1..=5 {
            hub.publish("bob", seq, entry());
        }
        assert!(sub.signals.lagged.load(Ordering::Acquire));
        assert_eq!(sub.signals.max_dropped.load(Ordering::Acquire), 5);
        assert_eq!(sub.rx.recv().await.unwrap().seq, 1);
        assert_eq!(sub.rx.recv().await.unwrap().seq, 2);
        assert!(sub.rx.try_recv().is_err());
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
        let mut phone = hub.subscribe("bob", "phone");
        let mut laptop = hub.subscribe("bob", "laptop");
        let frame = Arc::new(ServerFrame::default());
        assert_eq!(hub.notify("bob", &frame, "typing"), 2);
        assert_eq!(hub.notify("carol", &frame, "typing"), 0, "not connected");
        assert!(laptop.notices.recv().await.is_some());
        // The phone does not read: its queue of 2 fills and the third event is shed.
        assert_eq!(hub.notify("bob", &frame, "typing"), 2);
        assert_eq!(hub.notify("bob", &frame, "typing"), 1);
        for _ in 0..2 {
            assert!(phone.notices.recv().await.is_some());
        }
        assert!(phone.notices.try_recv().is_err());
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
