//! Per-user server-side history: with device-only history (0 days) an entry goes once every
//! device has it and the user read it; with N days, once it is also older than N days; entries
//! not yet received or read by all stay, whatever the setting.

use super::*;
use crate::writer::command::SettingsChange;

fn set_history(c: &mut Writer, who: &Identity, days: Option<u32>) {
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Client(ClientCmd::Settings {
        who: who.clone(),
        change: SettingsChange {
            hide_last_seen: None,
            history_days: Some(days),
        },
        reply,
    });
    c.run_batch(vec![cmd].into_iter());
    rx.blocking_recv().unwrap().unwrap();
}

fn connect(c: &mut Writer, who: &Identity) {
    let (a, ra) = attach(who, 8);
    c.run_batch(vec![a].into_iter());
    ra.blocking_recv().unwrap().unwrap();
}

fn send_n(c: &mut Writer, from: &Identity, to: &str, cmids: &[&str]) {
    for cmid in cmids {
        let (s, rs) = send(from, cmid, to);
        c.run_batch(vec![s].into_iter());
        rs.blocking_recv().unwrap().unwrap();
    }
}

fn seqs(c: &Writer, user: &str) -> Vec<u64> {
    c.store
        .inbox_from(user, 1, 1000)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

#[test]
fn device_only_history_keeps_an_entry_until_every_device_has_it_and_it_is_read() {
    let (mut c, _hub) = writer();
    let alice = id("alice", "phone");
    let (phone, laptop) = (id("bob", "phone"), id("bob", "laptop"));
    connect(&mut c, &phone);
    connect(&mut c, &laptop);
    set_history(&mut c, &phone, Some(0));
    send_n(&mut c, &alice, "bob", &["1", "2", "3"]);
    assert_eq!(seqs(&c, "bob"), vec![1, 2, 3]);

    // The phone has and read all three; the laptop has none: all stay.
    c.run_batch(vec![ack(&phone, 3, true)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![1, 2, 3]);
    // The laptop has two: those two go.
    c.run_batch(vec![ack(&laptop, 2, false)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![3]);
    c.run_batch(vec![ack(&laptop, 3, false)].into_iter());
    assert!(seqs(&c, "bob").is_empty());
    // Alice got her receipts, made before the entries went.
    let kinds: Vec<i32> = receipts_of(&c, "alice").iter().map(|r| r.0).collect();
    assert!(kinds.contains(&(chat_proto::v1::ReceiptKind::Read as i32)));

    // Received by both but not read: kept (the read receipt is made from it).
    send_n(&mut c, &alice, "bob", &["4"]);
    c.run_batch(vec![ack(&phone, 4, false), ack(&laptop, 4, false)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![4]);
    c.run_batch(vec![ack(&laptop, 4, true)].into_iter());
    assert!(seqs(&c, "bob").is_empty());
    // Sequence numbers go on.
    send_n(&mut c, &alice, "bob", &["5"]);
    assert_eq!(seqs(&c, "bob"), vec![5]);
}

#[test]
fn n_days_of_history_trims_only_what_is_older() {
    let (mut c, _hub, clock) = writer_with_clock();
    let alice = id("alice", "phone");
    let bob = id("bob", "phone");
    connect(&mut c, &bob);
    set_history(&mut c, &bob, Some(7));
    send_n(&mut c, &alice, "bob", &["1", "2"]);
    clock.advance(Duration::from_secs(6 * 86_400));
    send_n(&mut c, &alice, "bob", &["3", "4"]);
    c.run_batch(vec![ack(&bob, 4, true)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![1, 2, 3, 4], "all within 7 days");

    clock.advance(Duration::from_secs(2 * 86_400));
    send_n(&mut c, &alice, "bob", &["5"]);
    c.run_batch(vec![ack(&bob, 5, true)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![3, 4, 5], "8 days old: gone");
    // The reads hide what has aged since the last trim, too.
    clock.advance(Duration::from_secs(6 * 86_400));
    let window = c.store.history_window("bob", (c.env.now_ms)()).unwrap();
    let (upto, floor) = window.unwrap();
    assert_eq!(upto, 5);
    let hidden: Vec<u64> = c
        .store
        .inbox_from("bob", 1, 10)
        .unwrap()
        .iter()
        .filter(|e| e.seq <= upto && e.ts_ms < floor)
        .map(|e| e.seq)
        .collect();
    assert_eq!(hidden, vec![3, 4]);
}

#[test]
fn an_unread_entry_outlives_the_window_and_a_new_setting_trims_at_once() {
    let (mut c, _hub, clock) = writer_with_clock();
    let alice = id("alice", "phone");
    let bob = id("bob", "phone");
    connect(&mut c, &bob);
    send_n(&mut c, &alice, "bob", &["1", "2", "3"]);
    // Read up to 2, received 3: no setting yet, nothing goes.
    c.run_batch(vec![ack(&bob, 2, true), ack(&bob, 3, false)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![1, 2, 3]);
    clock.advance(Duration::from_secs(2 * 86_400));
    // One day: the two read entries go at once; the unread one stays.
    set_history(&mut c, &bob, Some(1));
    assert_eq!(seqs(&c, "bob"), vec![3]);
    // Back to the cluster's retention: nothing more goes.
    set_history(&mut c, &bob, None);
    c.run_batch(vec![ack(&bob, 3, true)].into_iter());
    assert_eq!(seqs(&c, "bob"), vec![3]);
}
