//! A sender with a second device: its own copies are owed, judged and ordered like anyone's.

use super::*;

/// Alice with a second device (connected before her sends): each of her messages is also in her
/// own inbox, at the seqs her devices agree on.
fn with_own_copies() -> RunData {
    let mut run = clean();
    let own = |seq, msg_id: &str, cmid: &str| {
        let mut e = delivered(seq, msg_id, cmid);
        if let Event::Delivered { node, .. } = &mut e {
            *node = "n1".into();
        }
        e
    };
    // Her receipts now come after her two own copies.
    let alice = find(&mut run, "alice/a");
    alice
        .records
        .retain(|r| !matches!(r.event, Event::ReceiptSeen { .. } | Event::AckSent { .. }));
    push(alice, 3 * S, 1, own(1, "m1", "c1"));
    push(alice, 3 * S + 1, 1, own(2, "m2", "c2"));
    push(
        alice,
        6 * S,
        1,
        receipt(3, ReceiptKind::Delivered, &["m1", "m2"]),
    );
    push(alice, 7 * S, 1, receipt(4, ReceiptKind::Read, &["m1"]));
    push(alice, 7 * S + 1, 1, Event::AckSent { up_to: 4 });
    let mut laptop = dev(
        "alice",
        "laptop",
        vec![
            (S / 2, 1, connected(0)),
            (3 * S, 1, own(1, "m1", "c1")),
            (3 * S + 1, 1, own(2, "m2", "c2")),
            (6 * S, 1, receipt(3, ReceiptKind::Delivered, &["m1", "m2"])),
            (7 * S, 1, receipt(4, ReceiptKind::Read, &["m1"])),
        ],
    );
    laptop.records.sort_by_key(|r| r.at);
    run.devices.push(laptop);
    run
}

#[test]
fn own_copies_of_a_multi_device_sender_are_neither_foreign_nor_reordered() {
    let r = check(&with_own_copies());
    assert!(r.is_clean(), "{:#?}", r.violations);
    assert_eq!((r.delivered, r.own_copies_lost, r.foreign), (2, 0, 0));
}

#[test]
fn an_own_copy_missing_on_the_senders_other_device_is_lost() {
    let mut run = with_own_copies();
    find(&mut run, "alice/laptop")
        .records
        .retain(|r| !matches!(&r.event, Event::Delivered { seq: 2, .. }));
    let r = check(&run);
    assert_eq!(r.own_copies_lost, 1, "{:#?}", r.violations);
    assert!(!outstanding(&run).is_done(), "the quiet phase waits for it");
}

#[test]
fn own_copies_out_of_the_senders_ack_order_are_reordered() {
    let mut run = with_own_copies();
    for who in ["alice/a", "alice/laptop"] {
        for r in &mut find(&mut run, who).records {
            if let Event::Delivered {
                msg_id,
                client_msg_id,
                body,
                ..
            } = &mut r.event
            {
                let (id, cmid) = if msg_id == "m1" {
                    ("m2", "c2")
                } else {
                    ("m1", "c1")
                };
                *msg_id = id.into();
                *client_msg_id = cmid.into();
                *body = super::body(cmid, "bob");
            }
        }
    }
    let r = check(&run);
    assert!(r.reordered >= 1, "{:#?}", r.violations);
}
