//! Group messages: owed to every member (the sender too), judged per (sender device, group).

use super::*;

fn group_delivered(seq: u64, msg_id: &str, cmid: &str) -> Event {
    let mut e = delivered(seq, msg_id, cmid);
    if let Event::Delivered { to, body, .. } = &mut e {
        *to = "g-1".into();
        *body = super::body(cmid, "g-1");
    }
    e
}

/// Group g-1 of alice, bob and carol: alice sends g1 then g2 to it, then m1 to bob; every
/// member gets both group messages (alice too), after the group's creation event.
fn with_a_group() -> RunData {
    let event = |seq| Event::GroupEventSeen {
        seq,
        group: "g-1".into(),
        event_id: "e1".into(),
    };
    let alice = dev(
        "alice",
        "a",
        vec![
            (S, 1, connected(0)),
            (S + 1, 1, event(1)),
            (2 * S, 1, send("c1", "g-1")),
            (2 * S + 10, 1, acked("c1", "g1")),
            (2 * S + 20, 1, send("c2", "g-1")),
            (2 * S + 30, 1, acked("c2", "g2")),
            (2 * S + 40, 1, send("c3", "bob")),
            (2 * S + 50, 1, acked("c3", "m1")),
            (3 * S, 1, group_delivered(2, "g1", "c1")),
            (3 * S + 1, 1, group_delivered(3, "g2", "c2")),
            (6 * S, 1, receipt(4, ReceiptKind::Delivered, &["m1"])),
        ],
    );
    let member = |user: &str, with_m1: bool| {
        let mut ev = vec![(S, 1, connected(0)), (S + 1, 1, event(1))];
        let mut seq = 2;
        // Bob gets alice's 1:1 message before her group messages: another channel, no order.
        if with_m1 {
            ev.push((3 * S, 1, delivered(seq, "m1", "c3")));
            seq += 1;
        }
        ev.push((4 * S, 1, group_delivered(seq, "g1", "c1")));
        ev.push((4 * S + 1, 1, group_delivered(seq + 1, "g2", "c2")));
        ev.push((4 * S + 2, 1, Event::AckSent { up_to: seq + 1 }));
        dev(user, "d", ev)
    };
    let mut groups = std::collections::BTreeMap::new();
    groups.insert(
        "g-1".to_string(),
        vec!["alice".to_string(), "bob".into(), "carol".into()],
    );
    RunData {
        seed: 7,
        profile: "test".into(),
        end: 100 * S,
        fault_phase_end: 50 * S,
        devices: vec![alice, member("bob", true), member("carol", false)],
        groups,
        ..RunData::default()
    }
}

#[test]
fn group_messages_reach_every_member_and_are_judged_per_group() {
    let r = check(&with_a_group());
    assert!(r.is_clean(), "{:#?}", r.violations);
    assert_eq!(
        (r.acknowledged, r.group_acknowledged, r.delivered),
        (3, 2, 3)
    );
}

#[test]
fn a_group_message_missing_at_one_member_is_lost() {
    let mut run = with_a_group();
    find(&mut run, "carol/d")
        .records
        .retain(|r| !matches!(&r.event, Event::Delivered { msg_id, .. } if msg_id == "g2"));
    let r = check(&run);
    assert_eq!(r.lost, 1, "{:#?}", r.violations);
    assert!(!outstanding(&run).is_done(), "the quiet phase waits for it");
}

#[test]
fn a_group_message_at_a_non_member_is_foreign_and_out_of_order_is_reordered() {
    let mut run = with_a_group();
    let mut dave = dev(
        "dave",
        "d",
        vec![
            (S, 1, connected(0)),
            (4 * S, 1, group_delivered(1, "g1", "c1")),
        ],
    );
    dave.records.sort_by_key(|r| r.at);
    run.devices.push(dave);
    for r in &mut find(&mut run, "carol/d").records {
        if let Event::Delivered { seq, .. } = &mut r.event {
            *seq = 5 - *seq;
        }
    }
    let r = check(&run);
    assert_eq!(r.foreign, 1, "{:#?}", r.violations);
    assert!(r.reordered >= 1, "{:#?}", r.violations);
}

#[test]
fn a_receipt_for_a_group_message_at_its_sender_is_foreign() {
    let mut run = with_a_group();
    push(
        find(&mut run, "alice/a"),
        7 * S,
        1,
        receipt(5, ReceiptKind::Read, &["g1"]),
    );
    let r = check(&run);
    assert_eq!(r.foreign, 1, "{:#?}", r.violations);
}
