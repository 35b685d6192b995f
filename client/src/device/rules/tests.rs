//! The device's rules, frame by frame, without sockets or clocks.

use std::time::{Duration, Instant};

use chat_proto::v1::{
    client_frame, deliver, server_frame, Deliver, Error, ErrorCode, Message, Redirect, Sent,
    ServerFrame,
};

use super::{Output, Rules};
use crate::device::{CloseReason, DeviceEvent};
use chat_retry::Backoff;

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// What the rules asked for, one short line each.
fn show(rules: &mut Rules) -> Vec<String> {
    rules
        .take()
        .into_iter()
        .map(|o| match o {
            Output::Write(client_frame::Frame::Send(s)) => {
                format!("write send {}", s.client_msg_id)
            }
            Output::Write(client_frame::Frame::Ack(a)) => format!("write ack {}", a.up_to_seq),
            Output::Write(client_frame::Frame::Read(r)) => format!("write read {}", r.up_to_seq),
            Output::Write(other) => format!("write {other:?}"),
            Output::Report(DeviceEvent::SendAttempt {
                client_msg_id,
                attempt,
                ..
            }) => format!("attempt {client_msg_id} #{attempt}"),
            Output::Report(DeviceEvent::Sent(s)) => {
                format!("sent {} = {}", s.client_msg_id, s.msg_id)
            }
            Output::Report(DeviceEvent::SendError {
                client_msg_id,
                definitive,
                ..
            }) => format!("refused {client_msg_id} definitive={definitive}"),
            Output::Report(DeviceEvent::Deliver { deliver, repeat }) => {
                format!("deliver {} repeat={repeat}", deliver.seq)
            }
            Output::Report(DeviceEvent::AckWritten { up_to }) => format!("acked {up_to}"),
            Output::Report(DeviceEvent::ReadWritten { up_to }) => format!("read {up_to}"),
            Output::Report(DeviceEvent::Error(e)) => format!("error {}", e.code),
            Output::Report(DeviceEvent::Redirected(r)) => format!("redirected {}", r.url),
            Output::Report(other) => format!("{other:?}"),
        })
        .collect()
}

fn frame(f: server_frame::Frame) -> ServerFrame {
    ServerFrame { frame: Some(f) }
}

fn sent(cmid: &str, msg_id: &str) -> ServerFrame {
    frame(server_frame::Frame::Sent(Sent {
        client_msg_id: cmid.into(),
        msg_id: msg_id.into(),
        ..Default::default()
    }))
}

fn message(seq: u64) -> ServerFrame {
    frame(server_frame::Frame::Deliver(Deliver {
        seq,
        entry: Some(deliver::Entry::Message(Message {
            msg_id: format!("id{seq}"),
            ..Default::default()
        })),
    }))
}

fn refused(cmid: &str, code: ErrorCode) -> ServerFrame {
    frame(server_frame::Frame::Error(Error {
        code: code as i32,
        r#ref: cmid.into(),
        ..Default::default()
    }))
}

#[test]
fn messages_wait_for_a_connection_and_are_written_again_on_each_until_sent() {
    let mut r = Rules::new(0, BACKOFF);
    r.send("c1".into(), "bob".into(), "hi".into());
    assert!(show(&mut r).is_empty(), "offline: nothing written yet");
    r.connected();
    assert_eq!(show(&mut r), ["attempt c1 #1", "write send c1"]);
    r.send("c2".into(), "bob".into(), "again".into());
    assert_eq!(show(&mut r), ["attempt c2 #1", "write send c2"]);
    // The connection dies before any ✓: both go again, oldest first, same ids.
    r.disconnected();
    r.connected();
    assert_eq!(
        show(&mut r),
        [
            "attempt c1 #2",
            "write send c1",
            "attempt c2 #2",
            "write send c2"
        ]
    );
    let now = Instant::now();
    assert!(r.on_frame(sent("c1", "m1"), now).is_none());
    assert_eq!(show(&mut r), ["sent c1 = m1"]);
    r.disconnected();
    r.connected();
    assert_eq!(show(&mut r), ["attempt c2 #3", "write send c2"]);
}

#[test]
fn deliveries_are_acknowledged_once_and_repeats_reported_as_such() {
    let mut r = Rules::new(0, BACKOFF);
    r.connected();
    let now = Instant::now();
    r.on_frame(message(1), now);
    r.on_frame(message(2), now);
    assert_eq!(
        show(&mut r),
        [
            "deliver 1 repeat=false",
            "write ack 1",
            "acked 1",
            "deliver 2 repeat=false",
            "write ack 2",
            "acked 2"
        ]
    );
    r.on_frame(message(2), now);
    assert_eq!(show(&mut r), ["deliver 2 repeat=true"]);
    assert_eq!(r.last_seq(), 2, "a new connection resumes after 2");
}

#[test]
fn a_new_connection_reasserts_the_ack_and_the_read_marker() {
    let mut r = Rules::new(7, BACKOFF);
    r.connected();
    assert_eq!(show(&mut r), ["write ack 7", "acked 7"]);
    r.read(5);
    assert_eq!(show(&mut r), ["write read 5", "read 5"]);
    r.read(4);
    assert!(show(&mut r).is_empty(), "a read marker never goes back");
    r.disconnected();
    r.read(6);
    assert!(
        show(&mut r).is_empty(),
        "offline: kept for the next connection"
    );
    r.connected();
    assert_eq!(
        show(&mut r),
        ["write ack 7", "acked 7", "write read 6", "read 6"]
    );
}

#[test]
fn a_retryable_refusal_is_retried_after_a_backoff_a_definitive_one_gives_up() {
    let mut r = Rules::new(0, BACKOFF);
    r.connected();
    r.send("c1".into(), "bob".into(), "x".into());
    r.send("c2".into(), "bob".into(), "y".into());
    show(&mut r);
    let now = Instant::now();
    r.on_frame(refused("c1", ErrorCode::Unavailable), now);
    r.on_frame(refused("c2", ErrorCode::BodyTooLarge), now);
    assert_eq!(
        show(&mut r),
        ["refused c1 definitive=false", "refused c2 definitive=true"]
    );
    // After attempt 1: twice the minimum.
    let due = now + Duration::from_millis(100);
    assert_eq!(r.next_retry(), Some(due));
    r.retry_due(due - Duration::from_millis(1));
    assert!(show(&mut r).is_empty());
    r.retry_due(due);
    assert_eq!(show(&mut r), ["attempt c1 #2", "write send c1"]);
    assert_eq!(r.next_retry(), None);
    // c2 is gone for good: not written on the next connection.
    r.disconnected();
    r.connected();
    assert_eq!(show(&mut r), ["attempt c1 #3", "write send c1"]);
    // A node that says when to come back is believed when that is later than the backoff.
    let mut f = refused("c1", ErrorCode::Overloaded);
    if let Some(server_frame::Frame::Error(e)) = &mut f.frame {
        e.retry_after_ms = 5000;
    }
    r.on_frame(f, now);
    show(&mut r);
    assert_eq!(r.next_retry(), Some(now + Duration::from_secs(5)));
}

#[test]
fn refused_messages_of_one_conversation_are_retried_in_send_order() {
    let mut r = Rules::new(0, BACKOFF);
    r.connected();
    r.send("c1".into(), "g1".into(), "x".into());
    let now = Instant::now();
    // c1 has been refused three times (its next backoff is long), then c2 and c3 are sent.
    for _ in 0..2 {
        r.on_frame(refused("c1", ErrorCode::Unavailable), now);
        r.retry_due(now + Duration::from_secs(10));
    }
    r.send("c2".into(), "g1".into(), "y".into());
    r.send("c3".into(), "carol".into(), "z".into());
    show(&mut r);
    for c in ["c1", "c2", "c3"] {
        r.on_frame(refused(c, ErrorCode::Unavailable), now);
    }
    show(&mut r);
    // c2's and c3's own backoff (100 ms) is shorter than c1's (400 ms): c3, in another
    // conversation, goes then; c2 waits for c1 and follows it.
    let (short, long) = (
        now + Duration::from_millis(100),
        now + Duration::from_millis(400),
    );
    assert_eq!(r.next_retry(), Some(short));
    r.retry_due(short);
    assert_eq!(show(&mut r), ["attempt c3 #2", "write send c3"]);
    assert_eq!(r.next_retry(), Some(long));
    r.retry_due(long);
    assert_eq!(
        show(&mut r),
        [
            "attempt c1 #4",
            "write send c1",
            "attempt c2 #2",
            "write send c2"
        ]
    );
    assert_eq!(r.next_retry(), None);
}

#[test]
fn errors_for_no_pending_message_and_redirects_are_reported() {
    let mut r = Rules::new(0, BACKOFF);
    r.connected();
    let now = Instant::now();
    assert!(r.on_frame(refused("", ErrorCode::BadFrame), now).is_none());
    assert!(r
        .on_frame(refused("unknown", ErrorCode::Unavailable), now)
        .is_none());
    let end = r.on_frame(
        frame(server_frame::Frame::Redirect(Redirect {
            url: "ws://n2".into(),
            ..Default::default()
        })),
        now,
    );
    assert!(matches!(end, Some(CloseReason::Redirected)));
    let code = |c: ErrorCode| format!("error {}", c as i32);
    assert_eq!(
        show(&mut r),
        [
            code(ErrorCode::BadFrame),
            code(ErrorCode::Unavailable),
            "redirected ws://n2".into()
        ]
    );
}
