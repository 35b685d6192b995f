//! How the `chat` CLI prints frames: text for people, or JSON lines (`--json`).

use chat_client::v1::{deliver, server_frame, Deliver, ReceiptKind, ServerFrame};

pub fn print_frame(json: bool, f: &ServerFrame, label: &str) {
    if json {
        // The codec, not serde directly: it writes an enum value from a newer node (an error
        // code this build does not know) as 0 instead of failing.
        let bytes = chat_proto::encode(chat_proto::Encoding::Json, f);
        println!("{}", String::from_utf8_lossy(&bytes));
        return;
    }
    match &f.frame {
        Some(server_frame::Frame::Deliver(d)) => print_deliver(false, d),
        Some(server_frame::Frame::Sent(s)) => {
            println!("{label} msg_id={} ts={}", s.msg_id, s.ts)
        }
        Some(server_frame::Frame::Typing(t)) => {
            let what = match chat_client::v1::TypingState::try_from(t.state).unwrap_or_default() {
                chat_client::v1::TypingState::Typing => "is typing…",
                _ => "stopped typing",
            };
            println!("{} ({}) {what}", t.from, t.from_device)
        }
        Some(server_frame::Frame::Error(e)) => println!(
            "error {:?}: {}",
            chat_client::v1::ErrorCode::try_from(e.code).unwrap_or_default(),
            e.message
        ),
        Some(server_frame::Frame::ReadState(r)) => {
            let by = if r.device.is_empty() {
                "another device".to_string()
            } else {
                format!("device {}", r.device)
            };
            println!("read up to [{}] (by {by})", r.up_to_seq)
        }
        other => println!("{other:?}"),
    }
}

pub fn print_status(json: bool, s: &chat_client::v1::PresenceStatus) {
    if json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
    } else if s.online {
        println!("{}: online", s.user);
    } else if s.last_seen_ms > 0 {
        println!(
            "{}: last seen {} (ms since the epoch)",
            s.user, s.last_seen_ms
        );
    } else {
        println!("{}: offline", s.user);
    }
}

pub fn print_deliver(json: bool, d: &Deliver) {
    if json {
        // Through the codec (see `print_frame`), then just the deliver object.
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Deliver(d.clone())),
        };
        let bytes = chat_proto::encode(chat_proto::Encoding::Json, &frame);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        println!("{}", v.get("deliver").unwrap_or(&v));
        return;
    }
    match &d.entry {
        Some(deliver::Entry::Message(m)) if !m.group.is_empty() => {
            println!(
                "[{}] {} in {}: {}{} (msg_id {})",
                d.seq,
                m.from,
                m.group,
                m.body,
                file(d.seq, m),
                m.msg_id
            )
        }
        Some(deliver::Entry::Message(m)) => {
            println!(
                "[{}] {} → {}: {}{}",
                d.seq,
                m.from,
                m.to,
                m.body,
                file(d.seq, m)
            )
        }
        Some(deliver::Entry::Receipt(r)) => {
            let kind = match ReceiptKind::try_from(r.kind).unwrap_or_default() {
                ReceiptKind::Read => "read ✓✓ (blue)",
                _ => "delivered ✓✓",
            };
            println!("[{}] {} by {}: {}", d.seq, kind, r.by, r.msg_ids.join(", "))
        }
        Some(deliver::Entry::Failed(f)) => println!(
            "[{}] NOT DELIVERED to {}: {} ({})",
            d.seq, f.to, f.msg_id, f.reason
        ),
        Some(deliver::Entry::GroupEvent(e)) => println!(
            "[{}] group {} \"{}\": {:?} {} by {}",
            d.seq,
            e.group,
            e.name,
            chat_client::v1::GroupEventKind::try_from(e.kind).unwrap_or_default(),
            e.users.join(", "),
            e.by
        ),
        None => println!("[{}] (empty)", d.seq),
    }
}

/// A message's file, as a line's tail.
fn file(seq: u64, m: &chat_client::v1::Message) -> String {
    match &m.attachment {
        Some(a) => format!(
            " [file {} ({}, {} bytes): chat fetch --seq {seq}]",
            if a.name.is_empty() {
                &a.media_id
            } else {
                &a.name
            },
            a.mime,
            a.size
        ),
        None => String::new(),
    }
}
