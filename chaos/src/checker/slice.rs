//! The smallest history slices that show a violation: the events of the one message or the one
//! device involved, as readable lines with their run times.

use crate::history::{DeviceHistory, Event, Micros, Record};

use super::analysis::{Analysis, MsgKey};

/// Lines per slice at most: enough to follow one message or one seq, short enough to read.
const MAX_LINES: usize = 40;

/// `+12.345678s`: time since the start of the run.
pub fn secs(at: Micros) -> String {
    format!("+{}.{:06}s", at / 1_000_000, at % 1_000_000)
}

/// One record as a slice line.
pub fn line(h: &DeviceHistory, rec: &Record) -> String {
    format!(
        "{} {} c{}: {:?}",
        secs(rec.at),
        h.who(),
        rec.conn,
        rec.event
    )
}

fn is_conn_event(e: &Event) -> bool {
    matches!(
        e,
        Event::Connected { .. }
            | Event::Closed { .. }
            | Event::ConnectFailed { .. }
            | Event::Redirected { .. }
    )
}

fn finish(mut v: Vec<(Micros, String)>) -> Vec<(Micros, String)> {
    v.sort_by_key(|(t, _)| *t);
    v.dedup();
    v.truncate(MAX_LINES);
    v
}

impl Analysis<'_> {
    /// The sender's events for the message, and every delivery or receipt naming its msg id.
    pub fn message_slice(&self, key: &MsgKey) -> Vec<(Micros, String)> {
        let mut out = Vec::new();
        let msg_id = self.msgs.get(key).and_then(|m| m.msg_id()).unwrap_or("");
        for h in &self.run.devices {
            let sender = h.user == key.0 && h.device == key.1;
            for rec in &h.records {
                let hit = match &rec.event {
                    Event::SendAttempt { client_msg_id, .. }
                    | Event::Acked { client_msg_id, .. }
                    | Event::SendError { client_msg_id, .. } => sender && client_msg_id == &key.2,
                    Event::Delivered {
                        msg_id: id,
                        from,
                        from_device,
                        client_msg_id,
                        ..
                    } => {
                        id == msg_id
                            || (from == &key.0 && from_device == &key.1 && client_msg_id == &key.2)
                    }
                    Event::ReceiptSeen { msg_ids, .. } => msg_ids.iter().any(|i| i == msg_id),
                    Event::FailedSeen { msg_id: id, .. } => id == msg_id,
                    _ => false,
                };
                if hit {
                    out.push((rec.at, line(h, rec)));
                }
            }
        }
        finish(out)
    }

    /// A device's records around `seqs`: those deliveries (and their neighbours), and the
    /// connection events between the first and the last of them.
    pub fn device_slice(&self, idx: usize, seqs: &[u64], at: Micros) -> Vec<(Micros, String)> {
        let h = &self.run.devices[idx];
        let (lo, hi) = (
            seqs.iter().min().copied().unwrap_or(0).saturating_sub(1),
            seqs.iter().max().copied().unwrap_or(0) + 1,
        );
        let seq_of = |e: &Event| match e {
            Event::Delivered { seq, .. }
            | Event::ReceiptSeen { seq, .. }
            | Event::FailedSeen { seq, .. }
            | Event::GroupEventSeen { seq, .. }
            | Event::Suppressed { seq } => Some(*seq),
            _ => None,
        };
        let hits: Vec<&Record> = h
            .records
            .iter()
            .filter(|r| seq_of(&r.event).is_some_and(|s| s >= lo && s <= hi))
            .collect();
        let from = hits.iter().map(|r| r.at).min().unwrap_or(at);
        let to = hits.iter().map(|r| r.at).max().unwrap_or(at).max(at);
        let mut out: Vec<(Micros, String)> = hits.iter().map(|r| (r.at, line(h, r))).collect();
        for r in &h.records {
            let near_ack = matches!(r.event, Event::AckSent { up_to } | Event::ReadSent { up_to } if up_to >= lo && up_to <= hi);
            if (is_conn_event(&r.event) || near_ack) && r.at >= from && r.at <= to {
                out.push((r.at, line(h, r)));
            }
        }
        finish(out)
    }

    /// A device's connection events from shortly before `t` on.
    pub fn connections_after(&self, idx: usize, t: Micros) -> Vec<(Micros, String)> {
        let h = &self.run.devices[idx];
        h.records
            .iter()
            .filter(|r| r.at + 1_000_000 >= t && is_conn_event(&r.event))
            .take(8)
            .map(|r| (r.at, line(h, r)))
            .collect()
    }
}
