//! Each invariant: a small hand-written history that breaks it is caught, and the clean one
//! passes.

use super::*;
use crate::history::{
    FaultKind, FaultRecord, HostileCase, HostileRecord, NemesisLog, NodeCrash, Record,
    HOSTILE_MARKER,
};

mod groups;
mod own_copies;

const S: u64 = 1_000_000;

fn body(cmid: &str, to: &str) -> String {
    format!("chaos alice/a #{cmid} to {to}")
}

fn connected(resume_after: u64) -> Event {
    Event::Connected {
        node: "n1".into(),
        cursor: 0,
        inbox_seq: 0,
        resume_after,
    }
}

fn send(cmid: &str, to: &str) -> Event {
    Event::SendAttempt {
        client_msg_id: cmid.into(),
        to: to.into(),
        attempt: 1,
        body: body(cmid, to),
    }
}

fn acked(cmid: &str, msg_id: &str) -> Event {
    Event::Acked {
        client_msg_id: cmid.into(),
        msg_id: msg_id.into(),
        node: "n1".into(),
    }
}

fn delivered(seq: u64, msg_id: &str, cmid: &str) -> Event {
    Event::Delivered {
        seq,
        msg_id: msg_id.into(),
        from: "alice".into(),
        from_device: "a".into(),
        to: "bob".into(),
        client_msg_id: cmid.into(),
        body: body(cmid, "bob"),
        node: "n2".into(),
    }
}

fn receipt(seq: u64, kind: ReceiptKind, ids: &[&str]) -> Event {
    Event::ReceiptSeen {
        seq,
        kind,
        msg_ids: ids.iter().map(|s| s.to_string()).collect(),
        by: "bob".into(),
    }
}

fn dev(user: &str, device: &str, events: Vec<(u64, u32, Event)>) -> DeviceHistory {
    DeviceHistory {
        user: user.into(),
        device: device.into(),
        records: events
            .into_iter()
            .map(|(at, conn, event)| Record { at, conn, event })
            .collect(),
    }
}

/// Bob's device: connected at 1 s, gets m1 and m2, acks both; reads m1 if `read`.
fn bob(device: &str, read: bool) -> DeviceHistory {
    let mut ev = vec![
        (S, 1, connected(0)),
        (3 * S, 1, delivered(1, "m1", "c1")),
        (3 * S + 1, 1, Event::AckSent { up_to: 1 }),
        (4 * S, 1, delivered(2, "m2", "c2")),
        (4 * S + 1, 1, Event::AckSent { up_to: 2 }),
    ];
    if read {
        ev.push((5 * S, 1, Event::ReadSent { up_to: 1 }));
    }
    dev("bob", device, ev)
}

/// Alice sends m1 and m2 to Bob (two devices), gets both ✓, both DELIVERED receipts, and the
/// READ receipt for m1.
fn clean() -> RunData {
    let alice = dev(
        "alice",
        "a",
        vec![
            (S, 1, connected(0)),
            (2 * S, 1, send("c1", "bob")),
            (2 * S + 10, 1, acked("c1", "m1")),
            (2 * S + 20, 1, send("c2", "bob")),
            (2 * S + 30, 1, acked("c2", "m2")),
            (6 * S, 1, receipt(1, ReceiptKind::Delivered, &["m1", "m2"])),
            (6 * S + 1, 1, Event::AckSent { up_to: 1 }),
            (7 * S, 1, receipt(2, ReceiptKind::Read, &["m1"])),
            (7 * S + 1, 1, Event::AckSent { up_to: 2 }),
        ],
    );
    RunData {
        seed: 7,
        profile: "test".into(),
        end: 100 * S,
        fault_phase_end: 50 * S,
        devices: vec![alice, bob("b1", true), bob("b2", false)],
        ..RunData::default()
    }
}

/// Appends one event to a device's history.
fn push(d: &mut DeviceHistory, at: u64, conn: u32, event: Event) {
    d.records.push(Record { at, conn, event });
}

fn find<'a>(run: &'a mut RunData, who: &str) -> &'a mut DeviceHistory {
    run.devices.iter_mut().find(|d| d.who() == who).unwrap()
}

#[test]
fn a_clean_history_passes() {
    let r = check(&clean());
    assert!(r.is_clean(), "{:#?}", r.violations);
    assert_eq!((r.sent, r.acknowledged, r.delivered, r.lost), (2, 2, 2, 0));
    assert!(outstanding(&clean()).is_done());
}

#[test]
fn a_message_missing_on_one_device_is_lost() {
    let mut run = clean();
    find(&mut run, "bob/b2")
        .records
        .retain(|r| !matches!(&r.event, Event::Delivered { seq: 2, .. }));
    let r = check(&run);
    assert_eq!(r.lost, 1);
    assert_eq!(r.count("lost"), 1);
    let ex = &r
        .violations
        .iter()
        .find(|v| v.invariant == "lost")
        .unwrap()
        .examples[0];
    assert!(ex.summary.contains("bob/b2"), "{}", ex.summary);
    assert!(
        ex.slice.iter().any(|l| l.contains("SendAttempt")),
        "{:?}",
        ex.slice
    );
    assert_eq!(outstanding(&run).undelivered, 1);
}

#[test]
fn a_device_that_never_came_back_after_the_ack_is_not_owed_the_message() {
    let mut run = clean();
    let b2 = find(&mut run, "bob/b2");
    b2.records.retain(|r| {
        !matches!(
            &r.event,
            Event::Delivered { seq: 2, .. } | Event::AckSent { up_to: 2 }
        )
    });
    b2.records.insert(
        3,
        Record {
            at: 2 * S,
            conn: 1,
            event: Event::Closed {
                reason: "gone".into(),
            },
        },
    );
    b2.records.retain(|r| r.at <= 2 * S);
    let r = check(&run);
    assert_eq!(r.count("lost"), 0, "{:#?}", r.violations);
}

#[test]
fn a_redelivery_after_an_ack_is_a_duplicate_but_not_after_none() {
    let mut run = clean();
    let b1 = find(&mut run, "bob/b1");
    push(b1, 8 * S, 1, Event::Closed { reason: "x".into() });
    push(b1, 9 * S, 2, connected(2));
    push(b1, 9 * S + 1, 2, delivered(2, "m2", "c2"));
    push(b1, 9 * S + 2, 2, Event::Suppressed { seq: 2 });
    let r = check(&run);
    assert_eq!(r.duplicated, 1, "{:#?}", r.violations);
    assert_eq!(r.suppressed, 1);

    // Never acknowledged nor resumed past: counted, not judged.
    let mut run = clean();
    let b1 = find(&mut run, "bob/b1");
    b1.records
        .retain(|r| !matches!(r.event, Event::AckSent { up_to: 2 }));
    push(b1, 8 * S, 1, Event::Closed { reason: "x".into() });
    push(b1, 9 * S, 2, connected(1));
    push(b1, 9 * S + 1, 2, delivered(2, "m2", "c2"));
    let r = check(&run);
    assert_eq!(r.duplicated, 0, "{:#?}", r.violations);
    assert_eq!(r.redelivered_unacked, 1);
}

#[test]
fn one_msg_id_at_two_seqs_is_a_duplicate() {
    let mut run = clean();
    push(find(&mut run, "bob/b1"), 8 * S, 1, delivered(3, "m2", "c2"));
    let r = check(&run);
    assert_eq!(r.duplicated, 1, "{:#?}", r.violations);
}

#[test]
fn messages_out_of_ack_order_are_reordered() {
    let mut run = clean();
    for who in ["bob/b1", "bob/b2"] {
        for rec in &mut find(&mut run, who).records {
            if let Event::Delivered { seq, .. } = &rec.event {
                rec.event = if *seq == 1 {
                    delivered(1, "m2", "c2")
                } else {
                    delivered(2, "m1", "c1")
                };
            }
        }
    }
    let r = check(&run);
    assert_eq!(r.reordered, 1, "{:#?}", r.violations);
}

#[test]
fn a_seq_going_back_on_a_connection_is_caught() {
    let mut run = clean();
    let b1 = find(&mut run, "bob/b1");
    b1.records.swap(1, 3);
    let r = check(&run);
    assert_eq!(r.non_monotonic, 1, "{:#?}", r.violations);
}

#[test]
fn a_skipped_seq_is_a_gap() {
    let mut run = clean();
    let b2 = find(&mut run, "bob/b2");
    b2.records
        .retain(|r| !matches!(&r.event, Event::Delivered { seq: 1, .. }));
    let r = check(&run);
    assert_eq!(r.gaps, 1, "{:#?}", r.violations);
}

#[test]
fn one_seq_two_entries_is_a_conflict() {
    let mut run = clean();
    for rec in &mut find(&mut run, "bob/b2").records {
        if matches!(&rec.event, Event::Delivered { seq: 2, .. }) {
            rec.event = delivered(2, "m9", "c9");
        }
    }
    let r = check(&run);
    assert!(r.seq_conflicts >= 1, "{:#?}", r.violations);
}

#[test]
fn mail_for_someone_else_or_from_a_hostile_client_is_foreign() {
    let mut run = clean();
    run.devices.push(dev(
        "carol",
        "c",
        vec![(S, 1, connected(0)), (3 * S, 1, delivered(1, "m1", "c1"))],
    ));
    assert_eq!(check(&run).foreign, 1);

    let mut run = clean();
    let mut e = delivered(3, "mx", "h1");
    if let Event::Delivered { body, from, .. } = &mut e {
        *body = format!("{HOSTILE_MARKER} hi");
        *from = "h-evil".into();
    }
    push(find(&mut run, "bob/b1"), 9 * S, 1, e);
    let r = check(&run);
    assert_eq!(r.foreign, 1, "{:#?}", r.violations);
}

#[test]
fn a_missing_receipt_is_lost() {
    let mut run = clean();
    find(&mut run, "alice/a").records.retain(|r| {
        !matches!(
            r.event,
            Event::ReceiptSeen {
                kind: ReceiptKind::Read,
                ..
            }
        )
    });
    let r = check(&run);
    assert_eq!(r.receipts_lost, 1, "{:#?}", r.violations);
    assert_eq!(outstanding(&run).receipts_missing, 1);
}

#[test]
fn a_send_without_a_final_answer_is_unresolved_and_a_definitive_error_is_not() {
    let mut run = clean();
    let a = find(&mut run, "alice/a");
    push(a, 8 * S, 1, send("c3", "bob"));
    push(a, 8 * S + 5, 1, Event::Closed { reason: "x".into() });
    let r = check(&run);
    assert_eq!(r.count("unresolved_send"), 1, "{:#?}", r.violations);
    assert_eq!(outstanding(&run).unresolved, 1);

    let a = find(&mut run, "alice/a");
    a.records.insert(
        a.records.len() - 1,
        Record {
            at: 8 * S + 1,
            conn: 1,
            event: Event::SendError {
                client_msg_id: "c3".into(),
                code: "BODY_TOO_LARGE".into(),
                message: "".into(),
                definitive: true,
            },
        },
    );
    let r = check(&run);
    assert!(r.is_clean(), "{:#?}", r.violations);
    assert_eq!(r.definitive_errors, 1);
}

#[test]
fn an_attempt_unanswered_on_an_open_connection_is_caught() {
    let mut run = clean();
    let a = find(&mut run, "alice/a");
    push(a, 8 * S, 1, send("c3", "bob"));
    let r = check(&run);
    assert_eq!(r.unanswered_attempts, 1, "{:#?}", r.violations);
}

#[test]
fn a_retry_with_another_msg_id_breaks_dedup() {
    let mut run = clean();
    push(find(&mut run, "alice/a"), 8 * S, 1, acked("c1", "m1-again"));
    assert_eq!(check(&run).count("dedup"), 1);
}

#[test]
fn an_ack_while_the_disk_was_full_must_be_durable() {
    let mut run = clean();
    run.nemesis = NemesisLog {
        faults: vec![FaultRecord {
            kind: FaultKind::DiskFull,
            target: "n1".into(),
            start: 2 * S,
            end: Some(9 * S),
            outcome: String::new(),
            ok: true,
        }],
        ..NemesisLog::default()
    };
    let r = check(&run);
    assert!(r.is_clean(), "{:#?}", r.violations);
    assert_eq!(r.acked_while_full, 2);
    let a = find(&mut run, "alice/a");
    push(a, 8 * S, 1, send("c3", "bob"));
    push(a, 8 * S + 1, 1, acked("c3", "m3"));
    let r = check(&run);
    assert_eq!(r.count("acked_while_full"), 1, "{:#?}", r.violations);
}

#[test]
fn hostile_successes_and_node_crashes_are_violations() {
    let mut run = clean();
    let rec = |case, welcomed_as: Option<&str>, acked| HostileRecord {
        at: S,
        case,
        user: "h-1".into(),
        welcomed_as: welcomed_as.map(String::from),
        errors: vec![],
        acked,
        sent: 1,
        foreign_entries: 0,
        closed: None,
        skipped: false,
        detail: String::new(),
    };
    run.hostile = vec![rec(HostileCase::ForgedFrom, Some("h-1"), 0)];
    let r = check(&run);
    assert!(r.is_clean(), "{:#?}", r.violations);
    assert_eq!(
        r.warnings.len(),
        1,
        "no PERMISSION_DENIED seen: {:?}",
        r.warnings
    );

    run.hostile = vec![
        rec(HostileCase::ForgedFrom, Some("h-1"), 1),
        rec(HostileCase::BadSignature, Some("h-1"), 0),
        rec(HostileCase::TokenForOtherUser, Some("alice"), 0),
    ];
    assert_eq!(check(&run).count("hostile"), 3);

    // A file that is not the user's: any ✓ or URL granted is a violation.
    run.hostile = vec![
        rec(HostileCase::ForeignMedia, Some("h-1"), 1),
        rec(HostileCase::StealMedia, Some("h-1"), 1),
        rec(HostileCase::StealMedia, Some("h-1"), 0),
    ];
    assert_eq!(check(&run).count("hostile"), 2);

    let mut run = clean();
    run.nemesis.crashes.push(NodeCrash {
        node: "n2".into(),
        at: S,
        status: "signal 6".into(),
        log_tail: "panicked".into(),
    });
    assert_eq!(check(&run).count("node_crash"), 1);
}

#[test]
fn unavailability_is_the_longest_reconnect_gap() {
    let mut run = clean();
    let b1 = find(&mut run, "bob/b1");
    push(b1, 10 * S, 1, Event::Closed { reason: "x".into() });
    push(b1, 13 * S, 2, connected(2));
    let r = check(&run);
    assert_eq!(r.unavailability_max_us, 3 * S);
    assert_eq!(r.reconnects, 1);
}

#[test]
fn an_inbox_that_went_backwards_is_caught() {
    let mut run = clean();
    let b1 = find(&mut run, "bob/b1");
    push(b1, 8 * S, 1, Event::Closed { reason: "x".into() });
    b1.records.push(Record {
        at: 9 * S,
        conn: 2,
        event: Event::Connected {
            node: "n6".into(),
            cursor: 0,
            inbox_seq: 1,
            resume_after: 2,
        },
    });
    let r = check(&run);
    assert_eq!(r.inbox_regressed, 1, "{:#?}", r.violations);
    assert_eq!(r.count("inbox_regressed"), 1);
}
