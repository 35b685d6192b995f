//! The judge: a pure function from a run's histories and nemesis log to a [`Report`]. No I/O, no
//! clock: the same run always gets the same verdict, so a saved run can be checked again offline
//! and every invariant has hand-written histories in `checker/tests.rs` that it must catch.
//!
//! Invariants (each a named entry of [`Report::violations`]):
//! - `lost`: every ✓'d message reaches every device of its recipient (for a group message:
//!   of every member, the sender included) that existed before the ✓ and was connected at some
//!   point after it (unless the sender was told `Failed`).
//! - `duplicated`: no device is sent an entry again that it had already acknowledged (by `Ack`,
//!   `Read` or `Hello.resume_after`), nor one msg_id at two seqs, nor one seq twice on one
//!   connection. Re-sending a seq the device never acknowledged is counted, not judged.
//! - `non_monotonic`, `reordered`, `gap`, `seq_conflict`: seqs only grow on a connection; one
//!   sender device's messages to one recipient (or one group) arrive in ✓ order; no seq is
//!   skipped; one seq is one entry on every device of the user.
//! - `inbox_regressed`: a device is never welcomed with an inbox whose newest seq is below a
//!   seq it already received (the user's history went backwards, e.g. lost in a move).
//! - `foreign`: nothing reaches a user it was not addressed to (a group's messages only its
//!   members), bodies arrive as sent, and no hostile body reaches anyone; no receipt for a group
//!   message reaches its sender (they are counted on the group's node).
//! - `receipt_lost`: a DELIVERED (READ) receipt for every ✓'d 1:1 message some recipient device
//!   acknowledged (read) reaches the sender's devices.
//! - `unresolved_send`, `unanswered_send`, `dedup`: every message ends ✓'d or definitively
//!   refused; every attempt is answered unless its connection dropped; a retry gets the same id.
//! - `acked_while_full`: a ✓ given by a node whose disk was full is for a durable message.
//! - `hostile`, `node_crash`, `nemesis`: hostile clients achieve nothing; no node exits unasked;
//!   the faults heal (moves commit, removed nodes drain, restarted nodes come back).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{DeviceHistory, Event, Micros, ReceiptKind, RunData, HOSTILE_MARKER};

mod analysis;
mod faults;
mod slice;
#[cfg(test)]
mod tests;

use analysis::Analysis;

/// Examples kept per invariant (the count is always complete); every nemesis finding and node
/// crash is kept, they are few and each is different.
const EXAMPLES: usize = 3;

fn examples_kept(invariant: &str) -> usize {
    if matches!(invariant, "nemesis" | "node_crash") {
        usize::MAX
    } else {
        EXAMPLES
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    pub profile: String,
    /// Distinct messages the workload tried to send.
    pub sent: usize,
    pub acknowledged: usize,
    /// ✓'d messages to one of the workload's groups (each must reach every member's devices).
    #[serde(default)]
    pub group_acknowledged: usize,
    /// ✓'d messages that reached every device they had to reach.
    pub delivered: usize,
    pub lost: usize,
    /// ✓'d messages missing from some other device of their multi-device sender.
    pub own_copies_lost: usize,
    /// Server-side duplicates (see the module doc).
    pub duplicated: usize,
    /// Seqs sent again after a reconnect that the device had never acknowledged (not judged).
    pub redelivered_unacked: usize,
    /// Deliveries the clients themselves dropped as already processed.
    pub suppressed: usize,
    pub reordered: usize,
    pub non_monotonic: usize,
    pub gaps: usize,
    pub seq_conflicts: usize,
    /// Connections welcomed with an inbox whose newest seq is below one the device had.
    pub inbox_regressed: usize,
    pub foreign: usize,
    pub receipts_lost: usize,
    pub unresolved_sends: usize,
    pub unanswered_attempts: usize,
    pub definitive_errors: usize,
    /// Every error code honest sends were answered with, and how often.
    pub send_errors_by_code: BTreeMap<String, usize>,
    /// Why connection attempts failed (router 503, refused STORAGE_FULL, ...), and how often.
    pub connect_failures: BTreeMap<String, usize>,
    /// ✓'d messages the sender was later told had `Failed`.
    pub failed_reported: usize,
    pub acked_while_full: usize,
    pub hostile_cases: usize,
    pub hostile_skipped: usize,
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Faults that could not run as planned (skipped, refused, timed out).
    pub faults_not_ok: usize,
    pub rebalances_completed: usize,
    pub node_crashes: usize,
    /// Fail-stops on a storage error while the node's disk was full (documented, not judged).
    pub storage_stops: usize,
    pub reconnects: usize,
    /// Longest time a user had a device disconnected before its next `Welcome`: max and p99
    /// over users.
    pub unavailability_max_us: u64,
    pub unavailability_p99_us: u64,
    /// Deviations from documented behaviour that break no invariant (a hostile frame answered
    /// with another code than the docs say, ...).
    pub warnings: Vec<String>,
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: String,
    pub count: usize,
    pub examples: Vec<Example>,
}

/// One occurrence, with the smallest slice of history that shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub summary: String,
    /// Time of the slice's first event (to find the node log lines around it).
    pub first_at: Micros,
    pub slice: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn count(&self, invariant: &str) -> usize {
        self.violations
            .iter()
            .find(|v| v.invariant == invariant)
            .map_or(0, |v| v.count)
    }

    /// The slice for another example of `invariant`, computed only if it will be kept (a run
    /// with many violations would otherwise scan every history once per violation).
    fn slice_if(
        &self,
        invariant: &str,
        slice: impl FnOnce() -> Vec<(Micros, String)>,
    ) -> Vec<(Micros, String)> {
        let kept = self
            .violations
            .iter()
            .find(|v| v.invariant == invariant)
            .map_or(0, |v| v.examples.len());
        if kept < examples_kept(invariant) {
            slice()
        } else {
            Vec::new()
        }
    }

    fn violate(&mut self, invariant: &str, summary: String, mut slice: Vec<(Micros, String)>) {
        slice.sort_by_key(|(t, _)| *t);
        let first_at = slice.iter().map(|(t, _)| *t).min().unwrap_or(0);
        let example = Example {
            summary,
            first_at,
            slice: slice.into_iter().map(|(_, l)| l).collect(),
        };
        match self
            .violations
            .iter_mut()
            .find(|v| v.invariant == invariant)
        {
            Some(v) => {
                v.count += 1;
                if v.examples.len() < examples_kept(invariant) {
                    v.examples.push(example);
                }
            }
            None => self.violations.push(Violation {
                invariant: invariant.into(),
                count: 1,
                examples: vec![example],
            }),
        }
    }
}

/// What the quiet phase still waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// (✓'d message, device) pairs not delivered yet.
    pub undelivered: usize,
    pub receipts_missing: usize,
    pub unresolved: usize,
}

impl Outstanding {
    pub fn is_done(&self) -> bool {
        self.undelivered == 0 && self.receipts_missing == 0 && self.unresolved == 0
    }
}

/// What is still in flight in a (possibly unfinished) run; `run.end` is "now".
pub fn outstanding(run: &RunData) -> Outstanding {
    let a = Analysis::new(run);
    Outstanding {
        undelivered: a
            .undelivered()
            .map(|(_, missing)| missing.len())
            .sum::<usize>()
            + a.own_copies_missing()
                .map(|(_, missing)| missing.len())
                .sum::<usize>(),
        receipts_missing: a.missing_receipts().len(),
        unresolved: a.msgs.values().filter(|m| m.unresolved()).count(),
    }
}

/// Judges a finished run.
pub fn check(run: &RunData) -> Report {
    let a = Analysis::new(run);
    let mut r = Report {
        seed: run.seed,
        profile: run.profile.clone(),
        ..Report::default()
    };
    sends(&a, &mut r);
    deliveries(&a, &mut r);
    order(&a, &mut r);
    foreign(&a, &mut r);
    receipts(&a, &mut r);
    disk_full(&a, &mut r);
    faults::hostile(run, &mut r);
    faults::nemesis(run, &mut r);
    faults::availability(run, &mut r);
    r
}

fn sends(a: &Analysis, r: &mut Report) {
    r.sent = a.msgs.len();
    r.acknowledged = a.msgs.values().filter(|m| m.acked.is_some()).count();
    r.group_acknowledged = a
        .msgs
        .values()
        .filter(|m| m.acked.is_some() && a.is_group(&m.to))
        .count();
    r.definitive_errors = a.msgs.values().filter(|m| m.definitive).count();
    for m in a.msgs.values() {
        for code in &m.error_codes {
            *r.send_errors_by_code.entry(code.clone()).or_default() += 1;
        }
    }
    for (key, m) in &a.msgs {
        if m.unresolved() {
            r.unresolved_sends += 1;
            let s = format!(
                "{}/{} message {} to {} was never ✓'d nor refused for good",
                key.0, key.1, key.2, m.to
            );
            let sl = r.slice_if("unresolved_send", || a.message_slice(key));
            r.violate("unresolved_send", s, sl);
        }
        if m.other_msg_ids
            .iter()
            .any(|id| Some(id.as_str()) != m.msg_id())
        {
            let s = format!(
                "{}/{} message {} got ✓ with different msg ids {:?} and {:?}",
                key.0,
                key.1,
                key.2,
                m.msg_id(),
                m.other_msg_ids
            );
            let sl = r.slice_if("dedup", || a.message_slice(key));
            r.violate("dedup", s, sl);
        }
    }
    for (dev, at, cmid) in a.unanswered_attempts() {
        r.unanswered_attempts += 1;
        let h = &a.run.devices[dev];
        let s = format!(
            "{} send {cmid} at {} got no answer on a connection that stayed open",
            h.who(),
            slice::secs(at)
        );
        let key = (h.user.clone(), h.device.clone(), cmid);
        let sl = r.slice_if("unanswered_send", || a.message_slice(&key));
        r.violate("unanswered_send", s, sl);
    }
}

fn deliveries(a: &Analysis, r: &mut Report) {
    for d in &a.devices {
        r.suppressed += d.suppressed;
        r.redelivered_unacked += d.redelivered_unacked;
        for (inv, at, seq, why) in &d.problems {
            match inv.as_str() {
                "duplicated" => r.duplicated += 1,
                "non_monotonic" => r.non_monotonic += 1,
                "seq_conflict" => r.seq_conflicts += 1,
                "inbox_regressed" => r.inbox_regressed += 1,
                _ => {}
            }
            let h = &a.run.devices[d.idx];
            let s = format!("{} seq {seq}: {why}", h.who());
            let sl = r.slice_if(inv, || a.device_slice(d.idx, &[*seq], *at));
            r.violate(inv, s, sl);
        }
        for seq in d.gaps() {
            r.gaps += 1;
            let h = &a.run.devices[d.idx];
            let s = format!(
                "{} never received seq {seq} (got seqs on both sides of it)",
                h.who()
            );
            let sl = r.slice_if("gap", || {
                a.device_slice(d.idx, &[seq.saturating_sub(1), seq + 1], 0)
            });
            r.violate("gap", s, sl);
        }
    }
    for (user, seq, ids) in a.user_seq_conflicts() {
        r.seq_conflicts += 1;
        r.violate(
            "seq_conflict",
            format!("{user} seq {seq} is different entries on different devices: {ids:?}"),
            Vec::new(),
        );
    }
    let mut lost_msgs = HashSet::new();
    for (key, missing) in a.undelivered() {
        lost_msgs.insert(key.clone());
        let m = &a.msgs[key];
        let devs: Vec<String> = missing.iter().map(|&i| a.run.devices[i].who()).collect();
        let s = format!(
            "{}/{} -> {} message {} (msg id {}) ✓'d by {} at {} never reached {devs:?}",
            key.0,
            key.1,
            m.to,
            key.2,
            m.msg_id().map_or("?", |s| s),
            m.acked.as_ref().map_or("?", |x| x.2.as_str()),
            slice::secs(m.acked.as_ref().map_or(0, |x| x.0))
        );
        let sl = r.slice_if("lost", || {
            let mut sl = a.message_slice(key);
            for &i in &missing {
                sl.extend(a.connections_after(i, m.acked.as_ref().map_or(0, |x| x.0)));
            }
            sl
        });
        r.violate("lost", s, sl);
    }
    r.lost = lost_msgs.len();
    for (key, missing) in a.own_copies_missing() {
        r.own_copies_lost += 1;
        let m = &a.msgs[key];
        let devs: Vec<String> = missing.iter().map(|&i| a.run.devices[i].who()).collect();
        let s = format!(
            "{}/{} -> {} message {} (msg id {}): its own copy never reached {devs:?}",
            key.0,
            key.1,
            m.to,
            key.2,
            m.msg_id().unwrap_or("?"),
        );
        let sl = r.slice_if("own_copy_lost", || a.message_slice(key));
        r.violate("own_copy_lost", s, sl);
    }
    r.failed_reported = a
        .msgs
        .values()
        .filter(|m| m.acked.is_some() && a.failed.contains(m.msg_id().unwrap_or("")))
        .count();
    r.delivered = a
        .msgs
        .iter()
        .filter(|(k, m)| {
            m.acked.is_some()
                && !lost_msgs.contains(*k)
                && !a.failed.contains(m.msg_id().unwrap_or(""))
        })
        .count();
}

/// One sender device's messages to one recipient or group (or, `true`, its own copies).
type Channel<'a> = (&'a str, &'a str, bool, &'a str);

fn order(a: &Analysis, r: &mut Report) {
    for (user, seqs) in &a.user_entries {
        // Per sender device: the highest ✓ rank delivered so far, in this user's seq order.
        let mut high: HashMap<Channel, (usize, u64, &str)> = HashMap::new();
        for (seq, entry) in seqs {
            let analysis::Entry::Msg(msg_id) = entry else {
                continue;
            };
            let Some(key) = a.by_msg_id.get(msg_id.as_str()) else {
                continue;
            };
            // In a sender's own inbox (its copies), its messages to everyone keep its ✓ order;
            // in a recipient's, its messages to that recipient do; in a member's (the sender's
            // too), its messages to that group do.
            let Some(to) = a.msgs.get(key).map(|m| m.to.as_str()) else {
                continue;
            };
            let group = a.is_group(to);
            let own = key.0 == *user && to != user && !group;
            let ranks = if own { &a.own_rank } else { &a.rank };
            let Some(&rank) = ranks.get(msg_id.as_str()) else {
                continue;
            };
            let k = (
                key.0.as_str(),
                key.1.as_str(),
                own,
                if own { "" } else { to },
            );
            match high.get(&k) {
                Some(&(top, top_seq, top_id)) if rank < top => {
                    r.reordered += 1;
                    // Which nodes gave the two ✓s: different ones mean the sender moved between
                    // them (docs/rebalancing.md, "a moved sender's older messages").
                    let node = |k: &analysis::MsgKey| {
                        a.msgs[k].acked.as_ref().map_or("?", |x| x.2.as_str())
                    };
                    let top_node = a.by_msg_id.get(top_id).map_or("?", node);
                    let s = format!("{user} got {}/{}'s message {} (✓ #{rank} by {}) at seq {seq}, after its ✓ #{top} ({top_id}, by {top_node}) at seq {top_seq}", key.0, key.1, key.2, node(key));
                    let sl = r.slice_if("reordered", || {
                        let mut sl = a.message_slice(key);
                        if let Some(k2) = a.by_msg_id.get(top_id) {
                            sl.extend(a.message_slice(k2));
                        }
                        sl
                    });
                    r.violate("reordered", s, sl);
                }
                _ => {
                    high.insert(k, (rank, *seq, msg_id.as_str()));
                }
            }
        }
    }
}

fn foreign(a: &Analysis, r: &mut Report) {
    for h in &a.run.devices {
        for rec in &h.records {
            let why = match &rec.event {
                Event::Delivered {
                    msg_id,
                    from,
                    from_device,
                    to,
                    client_msg_id,
                    body,
                    ..
                } => {
                    let key = (from.clone(), from_device.clone(), client_msg_id.clone());
                    // A multi-device user's own message (its copy in the sender's inbox).
                    let own = from == &h.user;
                    let member = a.recipients(to).contains(&h.user.as_str());
                    if to != &h.user && !own && !member {
                        Some(format!("message {msg_id} addressed to {to}"))
                    } else if a.is_group(to) && !member {
                        Some(format!("message {msg_id} of group {to}, not theirs"))
                    } else if body.contains(HOSTILE_MARKER) {
                        Some(format!("message {msg_id} carries a hostile client's body"))
                    } else {
                        match a.msgs.get(&key) {
                            None => Some(format!("message {msg_id} from {from}/{from_device} ({client_msg_id}) that nobody sent")),
                            Some(m) if &m.to != to => Some(format!("message {msg_id} that {from} sent to {}, delivered as to {to}", m.to)),
                            Some(m) if &m.body != body => Some(format!("message {msg_id} with body {body:?}, sent as {:?}", m.body)),
                            Some(m) if m.msg_id().is_some_and(|id| id != msg_id.as_str()) => Some(format!("message {msg_id}, but its ✓ said {:?}", m.msg_id())),
                            Some(_) => None,
                        }
                    }
                }
                Event::ReceiptSeen { msg_ids, by, .. } => msg_ids.iter().find_map(|id| {
                    let key = a.by_msg_id.get(id.as_str())?;
                    let m = &a.msgs[key];
                    (key.0 != h.user || &m.to != by || a.is_group(&m.to)).then(|| {
                        format!("receipt by {by} for {id}, which {} sent to {}", key.0, m.to)
                    })
                }),
                Event::FailedSeen { msg_id, .. } => a
                    .by_msg_id
                    .get(msg_id.as_str())
                    .filter(|k| k.0 != h.user)
                    .map(|k| format!("failure report for {msg_id}, which {} sent", k.0)),
                _ => None,
            };
            if let Some(why) = why {
                r.foreign += 1;
                let s = format!("{} was sent {why}", h.who());
                r.violate("foreign", s, vec![(rec.at, slice::line(h, rec))]);
            }
        }
    }
}

fn receipts(a: &Analysis, r: &mut Report) {
    for (key, kind, missing) in a.missing_receipts() {
        r.receipts_lost += 1;
        let m = &a.msgs[&key];
        let devs: Vec<String> = missing.iter().map(|&i| a.run.devices[i].who()).collect();
        let s = format!(
            "{kind:?} receipt for {}/{} -> {} message {} ({}) never reached {devs:?}",
            key.0,
            key.1,
            m.to,
            key.2,
            m.msg_id().unwrap_or("?")
        );
        let sl = r.slice_if("receipt_lost", || a.message_slice(&key));
        r.violate("receipt_lost", s, sl);
    }
}

fn disk_full(a: &Analysis, r: &mut Report) {
    for (key, m) in &a.msgs {
        let Some((at, msg_id, node)) = &m.acked else {
            continue;
        };
        let full = a
            .run
            .nemesis
            .disk_full_windows(node)
            .iter()
            .any(|(s, e)| s <= at && at <= e);
        if !full {
            continue;
        }
        r.acked_while_full += 1;
        let delivered_somewhere = a
            .devices
            .iter()
            .any(|d| d.msg_first.contains_key(msg_id.as_str()));
        if !delivered_somewhere {
            let s = format!("{node} gave ✓ for {msg_id} ({}/{} {}) while its disk was full, and it was never delivered", key.0, key.1, key.2);
            let sl = r.slice_if("acked_while_full", || a.message_slice(key));
            r.violate("acked_while_full", s, sl);
        }
    }
}

/// Receipt kind names as the report prints them.
pub fn kind_name(k: ReceiptKind) -> &'static str {
    match k {
        ReceiptKind::Delivered => "DELIVERED",
        ReceiptKind::Read => "READ",
    }
}

/// Devices of `user` in `devices`.
pub(crate) fn devices_of<'a>(
    devices: &'a [DeviceHistory],
    user: &'a str,
) -> impl Iterator<Item = usize> + 'a {
    devices
        .iter()
        .enumerate()
        .filter(move |(_, h)| h.user == user)
        .map(|(i, _)| i)
}
