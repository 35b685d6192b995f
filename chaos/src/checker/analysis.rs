//! Indexes over a run's histories that the checks share: every message by its sender's key,
//! every device's deliveries by seq, each user's inbox as its devices saw it.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{DeviceHistory, Event, Micros, ReceiptKind, Record, RunData};

use super::devices_of;

/// (sender user, sender device, client_msg_id): the identity of a message attempt.
pub(crate) type MsgKey = (String, String, String);

/// An attempt that never got an answer while its connection stayed open this long.
const UNANSWERED_AFTER_US: Micros = 60_000_000;

pub(crate) struct Msg {
    pub to: String,
    pub body: String,
    /// When the sender first tried to send it.
    pub first_attempt: Micros,
    /// The first ✓: time, msg_id, node.
    pub acked: Option<(Micros, String, String)>,
    /// msg ids of later ✓s of the same message (retries): must equal the first.
    pub other_msg_ids: Vec<String>,
    pub definitive: bool,
    pub error_codes: Vec<String>,
}

impl Msg {
    pub fn msg_id(&self) -> Option<&str> {
        self.acked.as_ref().map(|a| a.1.as_str())
    }

    pub fn unresolved(&self) -> bool {
        self.acked.is_none() && !self.definitive
    }
}

/// What an inbox entry is, to compare two deliveries of one seq.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    Msg(String),
    Receipt(ReceiptKind, Vec<String>),
    Failed(String),
    /// A group event, by its id.
    GroupEvent(String),
}

/// One device's deliveries and acknowledgements, and the problems seen while reading them.
pub(crate) struct DeviceView {
    pub idx: usize,
    pub first_connected: Option<Micros>,
    pub first_cursor: u64,
    /// When the device had a usable connection: (Welcome, close or end of run).
    pub intervals: Vec<(Micros, Micros)>,
    /// First delivery of each seq: time, connection, entry.
    pub seqs: BTreeMap<u64, (Micros, u32, Entry)>,
    /// First delivery of each message: seq, time.
    pub msg_first: HashMap<String, (u64, Micros)>,
    /// `Ack` and `Read` frames written (both acknowledge), and `Read` alone.
    pub acks: Vec<(Micros, u64)>,
    pub reads: Vec<(Micros, u64)>,
    pub receipts: HashSet<(ReceiptKind, String)>,
    pub suppressed: usize,
    pub redelivered_unacked: usize,
    /// (invariant, time, seq, explanation).
    pub problems: Vec<(String, Micros, u64, String)>,
}

impl DeviceView {
    /// Seqs after the device's first cursor and below its highest that it never received.
    pub fn gaps(&self) -> Vec<u64> {
        let Some((&max, _)) = self.seqs.last_key_value() else {
            return Vec::new();
        };
        (self.first_cursor + 1..max)
            .filter(|s| !self.seqs.contains_key(s))
            .collect()
    }

    /// Had a usable connection at some time after `t`.
    pub fn open_after(&self, t: Micros) -> bool {
        self.intervals.iter().any(|&(_, e)| e > t)
    }

    /// Existed (had been welcomed) before `t`, so entries committed after `t` are its to get.
    pub fn existed_before(&self, t: Micros) -> bool {
        self.first_connected.is_some_and(|f| f < t)
    }

    fn first_cover(list: &[(Micros, u64)], seq: u64) -> Option<Micros> {
        list.iter().find(|(_, up)| *up >= seq).map(|(t, _)| *t)
    }
}

/// State while walking one device's records.
#[derive(Default)]
struct Walk {
    conn: u32,
    /// Highest seq on the current connection.
    conn_max: u64,
    /// Highest seq acknowledged on earlier connections, and the current one's resume_after.
    acked_before: u64,
    resume_after: u64,
    ack_max: u64,
    /// Highest seq ever delivered to the device.
    seen_max: u64,
    open_since: Option<Micros>,
}

pub(crate) struct Analysis<'a> {
    pub run: &'a RunData,
    pub msgs: BTreeMap<MsgKey, Msg>,
    pub by_msg_id: HashMap<String, MsgKey>,
    /// Position of each ✓'d message among its sender device's ✓s to the same recipient.
    pub rank: HashMap<String, usize>,
    /// Position of each ✓'d message among all its sender device's ✓s: the order of the own
    /// copies in a multi-device sender's inbox.
    pub own_rank: HashMap<String, usize>,
    pub devices: Vec<DeviceView>,
    /// Each user's inbox as the union of its devices' deliveries.
    pub user_entries: BTreeMap<String, BTreeMap<u64, Entry>>,
    /// msg ids a sender was told had `Failed`.
    pub failed: HashSet<String>,
    conflicts: Vec<(String, u64, Vec<Entry>)>,
}

impl<'a> Analysis<'a> {
    pub fn new(run: &'a RunData) -> Analysis<'a> {
        let mut a = Analysis {
            run,
            msgs: BTreeMap::new(),
            by_msg_id: HashMap::new(),
            rank: HashMap::new(),
            own_rank: HashMap::new(),
            devices: Vec::new(),
            user_entries: BTreeMap::new(),
            failed: HashSet::new(),
            conflicts: Vec::new(),
        };
        for h in &run.devices {
            a.messages_of(h);
        }
        for (i, h) in run.devices.iter().enumerate() {
            let v = a.view(i, h);
            a.devices.push(v);
        }
        a.inboxes();
        a
    }

    fn messages_of(&mut self, h: &DeviceHistory) {
        let mut ranks: HashMap<String, usize> = HashMap::new();
        let mut all = 0;
        for rec in &h.records {
            let key = |cmid: &str| (h.user.clone(), h.device.clone(), cmid.to_string());
            match &rec.event {
                Event::SendAttempt {
                    client_msg_id,
                    to,
                    body,
                    ..
                } => {
                    self.msgs.entry(key(client_msg_id)).or_insert_with(|| Msg {
                        to: to.clone(),
                        body: body.clone(),
                        first_attempt: rec.at,
                        acked: None,
                        other_msg_ids: Vec::new(),
                        definitive: false,
                        error_codes: Vec::new(),
                    });
                }
                Event::Acked {
                    client_msg_id,
                    msg_id,
                    node,
                } => {
                    let k = key(client_msg_id);
                    let Some(m) = self.msgs.get_mut(&k) else {
                        continue;
                    };
                    if m.acked.is_some() {
                        m.other_msg_ids.push(msg_id.clone());
                        continue;
                    }
                    m.acked = Some((rec.at, msg_id.clone(), node.clone()));
                    let r = ranks.entry(m.to.clone()).or_default();
                    *r += 1;
                    self.rank.insert(msg_id.clone(), *r);
                    all += 1;
                    self.own_rank.insert(msg_id.clone(), all);
                    self.by_msg_id.insert(msg_id.clone(), k);
                }
                Event::SendError {
                    client_msg_id,
                    code,
                    definitive,
                    ..
                } => {
                    if let Some(m) = self.msgs.get_mut(&key(client_msg_id)) {
                        m.error_codes.push(code.clone());
                        m.definitive |= *definitive;
                    }
                }
                _ => {}
            }
        }
    }

    fn view(&mut self, idx: usize, h: &DeviceHistory) -> DeviceView {
        let mut v = DeviceView {
            idx,
            first_connected: None,
            first_cursor: 0,
            intervals: Vec::new(),
            seqs: BTreeMap::new(),
            msg_first: HashMap::new(),
            acks: Vec::new(),
            reads: Vec::new(),
            receipts: HashSet::new(),
            suppressed: 0,
            redelivered_unacked: 0,
            problems: Vec::new(),
        };
        let mut w = Walk::default();
        for rec in &h.records {
            match &rec.event {
                Event::Connected {
                    cursor,
                    inbox_seq,
                    resume_after,
                    node,
                } => {
                    // The inbox's newest seq never goes below one the device already has.
                    if *inbox_seq < w.seen_max {
                        let why = format!(
                            "{node} welcomed the device with inbox seq {inbox_seq}, below seq {} \
                             it had already received",
                            w.seen_max
                        );
                        v.problems
                            .push(("inbox_regressed".into(), rec.at, w.seen_max, why));
                    }
                    if let Some(s) = w.open_since.take() {
                        v.intervals.push((s, rec.at));
                    }
                    w.open_since = Some(rec.at);
                    if v.first_connected.is_none() {
                        v.first_connected = Some(rec.at);
                        v.first_cursor = *cursor;
                    }
                    w.conn = rec.conn;
                    w.conn_max = 0;
                    w.acked_before = w.ack_max;
                    w.resume_after = *resume_after;
                }
                Event::Closed { .. } => {
                    if let Some(s) = w.open_since.take() {
                        v.intervals.push((s, rec.at));
                    }
                }
                Event::AckSent { up_to } => {
                    w.ack_max = w.ack_max.max(*up_to);
                    v.acks.push((rec.at, *up_to));
                }
                Event::ReadSent { up_to } => {
                    w.ack_max = w.ack_max.max(*up_to);
                    v.acks.push((rec.at, *up_to));
                    v.reads.push((rec.at, *up_to));
                }
                Event::Suppressed { .. } => v.suppressed += 1,
                Event::Delivered { seq, msg_id, .. } => {
                    delivery(&mut v, &mut w, rec, *seq, Entry::Msg(msg_id.clone()));
                }
                Event::ReceiptSeen {
                    seq, kind, msg_ids, ..
                } => {
                    for id in msg_ids {
                        v.receipts.insert((*kind, id.clone()));
                    }
                    delivery(
                        &mut v,
                        &mut w,
                        rec,
                        *seq,
                        Entry::Receipt(*kind, msg_ids.clone()),
                    );
                }
                Event::FailedSeen { seq, msg_id, .. } => {
                    self.failed.insert(msg_id.clone());
                    delivery(&mut v, &mut w, rec, *seq, Entry::Failed(msg_id.clone()));
                }
                Event::GroupEventSeen { seq, event_id, .. } => {
                    let e = Entry::GroupEvent(event_id.clone());
                    delivery(&mut v, &mut w, rec, *seq, e);
                }
                _ => {}
            }
        }
        if let Some(s) = w.open_since {
            v.intervals.push((s, self.run.end.max(s)));
        }
        v
    }

    fn inboxes(&mut self) {
        for v in &self.devices {
            let user = &self.run.devices[v.idx].user;
            let inbox = self.user_entries.entry(user.clone()).or_default();
            for (seq, (_, _, e)) in &v.seqs {
                match inbox.get(seq) {
                    Some(prev) if prev != e => {
                        self.conflicts
                            .push((user.clone(), *seq, vec![prev.clone(), e.clone()]));
                    }
                    Some(_) => {}
                    None => {
                        inbox.insert(*seq, e.clone());
                    }
                }
            }
        }
    }

    /// Whether `to` names one of the workload's groups.
    pub fn is_group(&self, to: &str) -> bool {
        self.run.groups.contains_key(to)
    }

    /// The users a message to `to` is for: a group's members (its sender too: its other
    /// devices show it), or the one recipient.
    pub fn recipients<'b>(&'b self, to: &'b str) -> Vec<&'b str> {
        match self.run.groups.get(to) {
            Some(members) => members.iter().map(String::as_str).collect(),
            None => vec![to],
        }
    }

    pub fn user_seq_conflicts(&self) -> Vec<(String, u64, Vec<Entry>)> {
        self.conflicts.clone()
    }

    /// ✓'d messages whose own copy some device of the sender should have and does not. A user
    /// with more than one device finds what it sends in its own inbox: every device of the
    /// sender that was welcomed before the first attempt (so its registration was stored before
    /// the send) and connected after the ✓, once another device had been welcomed before it.
    pub fn own_copies_missing(&self) -> impl Iterator<Item = (&MsgKey, Vec<usize>)> + '_ {
        self.msgs.iter().filter_map(|(key, m)| {
            let (t, msg_id, _) = m.acked.as_ref()?;
            // A group message reaches its sender's devices as a member's copy (`undelivered`).
            if m.to == key.0 || self.is_group(&m.to) {
                return None;
            }
            let before: Vec<usize> = devices_of(&self.run.devices, &key.0)
                .filter(|&i| self.devices[i].existed_before(m.first_attempt))
                .collect();
            if before.len() < 2 {
                return None;
            }
            let missing: Vec<usize> = before
                .into_iter()
                .filter(|&i| {
                    let d = &self.devices[i];
                    d.open_after(*t) && !d.msg_first.contains_key(msg_id)
                })
                .collect();
            (!missing.is_empty()).then_some((key, missing))
        })
    }

    /// ✓'d messages that some device of the recipient should have and does not.
    pub fn undelivered(&self) -> impl Iterator<Item = (&MsgKey, Vec<usize>)> + '_ {
        self.msgs.iter().filter_map(|(key, m)| {
            let (t, msg_id, _) = m.acked.as_ref()?;
            if self.failed.contains(msg_id) {
                return None;
            }
            let missing: Vec<usize> = self
                .recipients(&m.to)
                .into_iter()
                .flat_map(|u| devices_of(&self.run.devices, u))
                .filter(|&i| {
                    let d = &self.devices[i];
                    d.existed_before(*t) && d.open_after(*t) && !d.msg_first.contains_key(msg_id)
                })
                .collect();
            (!missing.is_empty()).then_some((key, missing))
        })
    }

    /// Receipts owed to senders: for each ✓'d message a recipient device acknowledged (read),
    /// the sender's devices connected after that which never saw the DELIVERED (READ) receipt.
    pub fn missing_receipts(&self) -> Vec<(MsgKey, ReceiptKind, Vec<usize>)> {
        let mut out = Vec::new();
        for (key, m) in &self.msgs {
            let Some(msg_id) = m.msg_id() else { continue };
            // A group message's receipts are counted on the group's node, never sent to its
            // sender (asked for with a group request instead).
            if self.is_group(&m.to) {
                continue;
            }
            let (mut t_del, mut t_read) = (None::<Micros>, None::<Micros>);
            for i in devices_of(&self.run.devices, &m.to) {
                let d = &self.devices[i];
                let Some(&(seq, _)) = d.msg_first.get(msg_id) else {
                    continue;
                };
                let min = |a: Option<Micros>, b: Option<Micros>| match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                t_del = min(t_del, DeviceView::first_cover(&d.acks, seq));
                t_read = min(t_read, DeviceView::first_cover(&d.reads, seq));
            }
            for (kind, t) in [(ReceiptKind::Delivered, t_del), (ReceiptKind::Read, t_read)] {
                let Some(t) = t else { continue };
                let missing: Vec<usize> = devices_of(&self.run.devices, &key.0)
                    .filter(|&i| {
                        let d = &self.devices[i];
                        d.existed_before(t)
                            && d.open_after(t)
                            && !d.receipts.contains(&(kind, msg_id.to_string()))
                    })
                    .collect();
                if !missing.is_empty() {
                    out.push((key.clone(), kind, missing));
                }
            }
        }
        out
    }

    /// Send attempts that got neither an answer nor a dropped connection for a long time:
    /// (device, time, client_msg_id).
    pub fn unanswered_attempts(&self) -> Vec<(usize, Micros, String)> {
        let mut out = Vec::new();
        for (i, h) in self.run.devices.iter().enumerate() {
            // Attempts of the current connection awaiting an answer.
            let mut waiting: HashMap<&str, Micros> = HashMap::new();
            let flush = |waiting: &mut HashMap<&str, Micros>, until: Micros, out: &mut Vec<_>| {
                for (cmid, at) in waiting.drain() {
                    if until.saturating_sub(at) > UNANSWERED_AFTER_US {
                        out.push((i, at, cmid.to_string()));
                    }
                }
            };
            for rec in &h.records {
                match &rec.event {
                    Event::SendAttempt { client_msg_id, .. } => {
                        waiting.entry(client_msg_id.as_str()).or_insert(rec.at);
                    }
                    Event::Acked { client_msg_id, .. } | Event::SendError { client_msg_id, .. } => {
                        waiting.remove(client_msg_id.as_str());
                    }
                    Event::Closed { .. } | Event::Connected { .. } => {
                        flush(&mut waiting, rec.at, &mut out)
                    }
                    _ => {}
                }
            }
            flush(&mut waiting, self.run.end, &mut out);
        }
        out
    }
}

fn delivery(v: &mut DeviceView, w: &mut Walk, rec: &Record, seq: u64, entry: Entry) {
    let (at, conn) = (rec.at, rec.conn);
    w.seen_max = w.seen_max.max(seq);
    let mut found: Vec<(&str, String)> = Vec::new();
    if seq <= w.conn_max {
        let why = format!("arrived after seq {} on connection {conn}", w.conn_max);
        found.push(("non_monotonic", why));
    }
    w.conn_max = w.conn_max.max(seq);
    match v.seqs.get(&seq) {
        Some((_, _, prev)) if prev != &entry => {
            found.push(("seq_conflict", format!("was {prev:?}, now {entry:?}")));
        }
        Some((_, prev_conn, _)) if *prev_conn == conn => {
            found.push(("duplicated", format!("sent twice on connection {conn}")));
        }
        Some((_, prev_conn, _)) => {
            if seq <= w.acked_before.max(w.resume_after) {
                let why = format!(
                    "sent again on connection {conn} (first on {prev_conn}) after the device \
                     acknowledged up to {} and resumed after {}",
                    w.acked_before, w.resume_after
                );
                found.push(("duplicated", why));
            } else {
                v.redelivered_unacked += 1;
            }
        }
        None => {
            if let Entry::Msg(id) = &entry {
                if let Some((first, _)) = v.msg_first.get(id) {
                    found.push((
                        "duplicated",
                        format!("message {id} again, first at seq {first}"),
                    ));
                } else {
                    v.msg_first.insert(id.clone(), (seq, at));
                }
            }
            v.seqs.insert(seq, (at, conn, entry));
        }
    }
    for (inv, why) in found {
        v.problems.push((inv.to_string(), at, seq, why));
    }
}
