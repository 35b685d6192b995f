//! Frame helpers for tests that drive a [`Client`] by hand: wait for a frame, take a backlog,
//! pick deliveries apart.

use chat_client::v1::{
    deliver, group_reply, group_request, server_frame, Deliver, GroupCreate, Message, Receipt,
    ServerFrame,
};
use chat_client::Client;
use tokio::time::Instant;

use crate::WAIT;

/// Receives frames until `pred` matches one, returning it and every frame seen before it.
pub async fn recv_until(
    c: &mut Client,
    what: &str,
    mut pred: impl FnMut(&ServerFrame) -> bool,
) -> (ServerFrame, Vec<ServerFrame>) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        match c.recv_until(deadline).await {
            Ok(f) if pred(&f) => return (f, before),
            Ok(f) => before.push(f),
            Err(e) => panic!("waiting for {what}: {e}; frames so far: {before:#?}"),
        }
    }
}

/// Sends a ping and returns every frame that arrived before its pong: a barrier that shows what
/// the node had sent this connection up to now.
pub async fn until_pong(c: &mut Client, nonce: u64) -> Vec<ServerFrame> {
    c.ping(nonce).await.expect("ping");
    recv_until(
        c,
        "pong",
        |f| matches!(&f.frame, Some(server_frame::Frame::Pong(p)) if p.nonce == nonce),
    )
    .await
    .1
}

/// Everything a freshly connected client is sent: its backlog (up to `welcome.inbox_seq`, which
/// arrives from storage at its own pace) and then whatever precedes a pong.
pub async fn backlog(c: &mut Client, nonce: u64) -> Vec<ServerFrame> {
    let end = c.welcome.inbox_seq;
    let mut frames = Vec::new();
    if end > c.welcome.cursor {
        let (last, before) = recv_until(c, "backlog", |f| {
            as_deliver(f).is_some_and(|d| d.seq >= end)
        })
        .await;
        frames = before;
        frames.push(last);
    }
    frames.extend(until_pong(c, nonce).await);
    frames
}

pub fn as_deliver(f: &ServerFrame) -> Option<&Deliver> {
    match &f.frame {
        Some(server_frame::Frame::Deliver(d)) => Some(d),
        _ => None,
    }
}

pub fn as_message(f: &ServerFrame) -> Option<(u64, &Message)> {
    match as_deliver(f)? {
        Deliver {
            seq,
            entry: Some(deliver::Entry::Message(m)),
        } => Some((*seq, m)),
        _ => None,
    }
}

pub fn as_receipt(f: &ServerFrame) -> Option<(u64, &Receipt)> {
    match as_deliver(f)? {
        Deliver {
            seq,
            entry: Some(deliver::Entry::Receipt(r)),
        } => Some((*seq, r)),
        _ => None,
    }
}

/// The error code of an Error frame.
pub fn error_code(f: &ServerFrame) -> Option<chat_proto::v1::ErrorCode> {
    match &f.frame {
        Some(server_frame::Frame::Error(e)) => chat_proto::v1::ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

/// Receives messages (acknowledging each) until `n` have arrived; returns them in arrival order.
pub async fn receive_messages(c: &mut Client, n: usize) -> Vec<(u64, Message)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let f = c
            .recv_until(deadline)
            .await
            .unwrap_or_else(|e| panic!("waiting for message {} of {n}: {e}", got.len() + 1));
        if let Some((seq, m)) = as_message(&f) {
            got.push((seq, m.clone()));
            c.ack(seq).await.expect("ack");
        }
    }
    got
}

/// Creates a group of `c`'s user and `members`; its id.
pub async fn create_group(c: &mut Client, name: &str, members: &[String]) -> String {
    let op = group_request::Op::Create(GroupCreate {
        name: name.into(),
        members: members.to_vec(),
        group: String::new(),
    });
    c.group_request("create-group", op)
        .await
        .expect("group request");
    let (f, _) = recv_until(c, "the new group", |f| {
        matches!(&f.frame, Some(server_frame::Frame::Group(r)) if r.request_id == "create-group")
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Group(r)) => match r.reply {
            Some(group_reply::Reply::Info(i)) => i.group,
            other => panic!("not the group's info: {other:?}"),
        },
        _ => unreachable!("matched a group reply"),
    }
}
