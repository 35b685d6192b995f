//! Writes the seed corpus: fuzz/corpus/<target>/<name>, one small frame a file. Every frame kind
//! of ClientFrame and ServerFrame in both encodings (each target gets the seeds of its own
//! encoding), plus edge cases written by hand. Run from anywhere:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --bin gen_corpus
//!
//! It adds and overwrites its own files and leaves other files (minimized finds, regressions)
//! alone. Every seed is also run through its target's check, so a seed that panics fails here.

use chat_fuzz::{by_name, corpus_dir};
use chat_proto::v1::{
    client_frame, deliver, media_request, Attachment, HttpHeader, MediaDownload, MediaReply,
    MediaRequest, MediaUpload, group_reply, group_request, server_frame, Ack, ClientFrame, Deliver,
    Error as ErrorFrame, Failed, GroupCreate, GroupEvent, GroupInfo, GroupMember,
    GroupReceiptsQuery, GroupReply, GroupRequest, Hello, HistoryPage, HistoryRequest, Limits,
    Message, Ping, Pong, ReadMarker, Receipt, Redirect, Send, Sent, ServerFrame, Welcome,
};
use chat_proto::{encode, Encoding};

fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    use client_frame::Frame as F;
    let f = |name, frame| {
        (
            name,
            ClientFrame {
                frame: Some(frame),
                active: false,
            },
        )
    };
    vec![
        f(
            "hello",
            F::Hello(Hello {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImRldiI6InBob25lIn0.sig".into(),
                agent: "chat-cli/0.1".into(),
                resume_after: 40,
            }),
        ),
        f("hello-empty", F::Hello(Hello::default())),
        f(
            "send",
            F::Send(Send {
                client_msg_id: "6f1c-01".into(),
                to: "bob".into(),
                body: "hi bob".into(),
                from: String::new(),
                group: String::new(),
                attachment: None,
            }),
        ),
        f(
            "send-attachment",
            F::Send(Send {
                client_msg_id: "6f1c-03".into(),
                to: "bob".into(),
                attachment: Some(attachment()),
                ..Send::default()
            }),
        ),
        f(
            "media-upload",
            F::Media(MediaRequest {
                request_id: "u1".into(),
                op: Some(media_request::Op::Upload(MediaUpload {
                    mime: "image/jpeg".into(),
                    size: 2_097_152,
                    sha256: SHA.into(),
                })),
            }),
        ),
        f(
            "media-download",
            F::Media(MediaRequest {
                request_id: "d1".into(),
                op: Some(media_request::Op::Download(MediaDownload {
                    media_id: MEDIA.into(),
                    seq: 41,
                })),
            }),
        ),
        f(
            "send-group",
            F::Send(Send {
                client_msg_id: "6f1c-02".into(),
                body: "hi all".into(),
                group: "g-019aa1b2-7c3d-7e00-8000-000000000009".into(),
                ..Send::default()
            }),
        ),
        f(
            "group-create",
            F::Group(GroupRequest {
                request_id: "g1".into(),
                op: Some(group_request::Op::Create(GroupCreate {
                    name: "team".into(),
                    members: vec!["bob".into(), "carol".into()],
                    group: String::new(),
                })),
            }),
        ),
        f(
            "group-receipts",
            F::Group(GroupRequest {
                request_id: "g2".into(),
                op: Some(group_request::Op::Receipts(GroupReceiptsQuery {
                    group: "g-1".into(),
                    msg_id: "m1".into(),
                    who: true,
                })),
            }),
        ),
        f(
            "send-from-unicode",
            F::Send(Send {
                client_msg_id: "019aa1b2-7c3d-7e00-8000-000000000001".into(),
                to: "bob@example.com".into(),
                body: "é \u{1F600} \"quoted\" \\ \n\t\u{0}".into(),
                from: "alice".into(),
                group: String::new(),
                attachment: None,
            }),
        ),
        f("ack", F::Ack(Ack { up_to_seq: 42 })),
        f(
            "ack-max",
            F::Ack(Ack {
                up_to_seq: u64::MAX,
            }),
        ),
        f("read", F::Read(ReadMarker { up_to_seq: 42 })),
        f(
            "history",
            F::History(HistoryRequest {
                before_seq: 40,
                limit: 2,
                request_id: "h1".into(),
            }),
        ),
        f("history-empty", F::History(HistoryRequest::default())),
        f("ping", F::Ping(Ping { nonce: 7 })),
        f("ping-zero", F::Ping(Ping { nonce: 0 })),
    ]
}

const MEDIA: &str = "m019aa1b27c3d7e008000000000000001";
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn attachment() -> Attachment {
    Attachment {
        media_id: MEDIA.into(),
        mime: "image/jpeg".into(),
        size: 2_097_152,
        sha256: SHA.into(),
        thumbnail: vec![0xff, 0xd8, 0xff, 0xe0, 0, 16],
        name: "beach.jpg".into(),
        node: "n1".into(),
    }
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    use server_frame::Frame as F;
    let f = |name, frame| (name, ServerFrame { frame: Some(frame) });
    let message = Message {
        msg_id: "019aa1b2-7c3d-7e00-8000-000000000001".into(),
        from: "alice".into(),
        from_device: "phone".into(),
        to: "bob".into(),
        body: "hi bob".into(),
        ts: 1_795_000_000_123,
        client_msg_id: "6f1c-01".into(),
        group: String::new(),
        attachment: None,
    };
    let with_file = Message {
        attachment: Some(attachment()),
        body: String::new(),
        ..message.clone()
    };
    let receipt = Receipt {
        kind: 2, // RECEIPT_KIND_READ
        by: "bob".into(),
        msg_ids: vec!["m1".into(), "m2".into()],
        ts: 1_795_000_000_456,
    };
    let failed = Failed {
        msg_id: "m3".into(),
        to: "carol".into(),
        client_msg_id: "c3".into(),
        reason: "home node unreachable".into(),
        ts: -1,
    };
    let deliver = |seq, entry| Deliver {
        seq,
        entry: Some(entry),
    };
    vec![
        f(
            "welcome",
            F::Welcome(Welcome {
                user: "alice".into(),
                device: "phone".into(),
                node: "node-1".into(),
                cursor: 40,
                inbox_seq: 42,
                read_seq: 41,
                limits: Some(Limits {
                    max_frame_bytes: 65536,
                    max_body_bytes: 32768,
                    max_id_bytes: 64,
                    max_history_page: 200,
                    max_devices_per_user: 8,
                    max_inflight_sends: 256,
                    max_media_bytes: 67_108_864,
                    max_thumbnail_bytes: 16_384,
                }),
                server_time_ms: 1_795_000_000_000,
            }),
        ),
        f(
            "sent",
            F::Sent(Sent {
                client_msg_id: "6f1c-01".into(),
                msg_id: "019aa1b2-7c3d-7e00-8000-000000000001".into(),
                ts: 1_795_000_000_123,
            }),
        ),
        f(
            "deliver-message",
            F::Deliver(deliver(43, deliver::Entry::Message(message.clone()))),
        ),
        f(
            "deliver-group-event",
            F::Deliver(deliver(
                44,
                deliver::Entry::GroupEvent(GroupEvent {
                    group: "g-1".into(),
                    kind: 2, // GROUP_EVENT_KIND_ADDED
                    by: "alice".into(),
                    users: vec!["dave".into()],
                    name: "team".into(),
                    ts: 1_795_000_000_789,
                    event_id: "e1".into(),
                }),
            )),
        ),
        f(
            "deliver-attachment",
            F::Deliver(deliver(44, deliver::Entry::Message(with_file))),
        ),
        f(
            "media-reply",
            F::Media(MediaReply {
                request_id: "u1".into(),
                media_id: MEDIA.into(),
                method: "PUT".into(),
                url: format!("http://127.0.0.1:7700/media/{MEDIA}?exp=1795000300123&size=2097152&sha256={SHA}&sig=AAAA"),
                headers: vec![HttpHeader {
                    name: "content-type".into(),
                    value: "image/jpeg".into(),
                }],
                expires_ms: 1_795_000_300_123,
            }),
        ),
        f(
            "group-info",
            F::Group(GroupReply {
                request_id: "g1".into(),
                reply: Some(group_reply::Reply::Info(GroupInfo {
                    group: "g-1".into(),
                    name: "team".into(),
                    created_by: "alice".into(),
                    created_ms: 1_795_000_000_000,
                    members: vec![GroupMember {
                        user: "alice".into(),
                        admin: true,
                        joined_ms: 1_795_000_000_000,
                    }],
                })),
            }),
        ),
        f(
            "deliver-receipt",
            F::Deliver(deliver(44, deliver::Entry::Receipt(receipt.clone()))),
        ),
        f(
            "deliver-failed",
            F::Deliver(deliver(45, deliver::Entry::Failed(failed.clone()))),
        ),
        f("deliver-empty", F::Deliver(Deliver::default())),
        f(
            "history",
            F::History(HistoryPage {
                request_id: "h1".into(),
                entries: vec![
                    deliver(45, deliver::Entry::Failed(failed)),
                    deliver(44, deliver::Entry::Receipt(receipt)),
                    deliver(43, deliver::Entry::Message(message)),
                ],
                more: true,
            }),
        ),
        f(
            "pong",
            F::Pong(Pong {
                nonce: 7,
                server_time_ms: 1_795_000_000_000,
            }),
        ),
        f(
            "error",
            F::Error(ErrorFrame {
                code: 14, // ERROR_CODE_OVERLOADED
                message: "too many connections".into(),
                r#ref: "6f1c-01".into(),
                retry_after_ms: 1000,
            }),
        ),
        f(
            "redirect",
            F::Redirect(Redirect {
                url: "ws://127.0.0.1:7401".into(),
                epoch: 3,
            }),
        ),
    ]
}

/// Hand-written inputs: (target, file name, bytes).
fn edge_cases() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let j = |name, s: &str| ("client_frame_json", name, s.as_bytes().to_vec());
    let sj = |name, s: &str| ("server_frame_json", name, s.as_bytes().to_vec());
    let p = |name, b: &[u8]| ("client_frame_protobuf", name, b.to_vec());
    let sp = |name, b: &[u8]| ("server_frame_protobuf", name, b.to_vec());
    vec![
        j("edge-empty-object", "{}"),
        j("edge-unknown-kind", r#"{"teleport":{}}"#),
        j(
            "edge-snake-case",
            r#"{"send":{"client_msg_id":"c1","to":"bob","body":"hi"}}"#,
        ),
        j("edge-u64-number", r#"{"ack":{"upToSeq":42}}"#),
        j(
            "edge-u64-string-max",
            r#"{"read":{"upToSeq":"18446744073709551615"}}"#,
        ),
        j(
            "edge-escapes",
            r#"{"send":{"clientMsgId":"c\u0031","to":"b\/ob","body":"\ud83d\ude00\n\u00e9"}}"#,
        ),
        j("edge-null-field", r#"{"send":{"to":null,"body":"x"}}"#),
        j("edge-two-kinds", r#"{"ping":{},"ack":{}}"#),
        j("edge-wrong-type", r#"{"send":{"to":5}}"#),
        j("edge-not-object", "[1,2,3]"),
        j(
            "edge-whitespace",
            " \t\r\n{ \"ping\" : { \"nonce\" : \"1\" } } \n",
        ),
        (
            "client_frame_json",
            "edge-invalid-utf8",
            b"{\"send\":{\"body\":\"\xff\xfe\"}}".to_vec(),
        ),
        sj(
            "edge-error-code-name",
            r#"{"error":{"code":"ERROR_CODE_OVERLOADED"}}"#,
        ),
        sj("edge-error-code-number", r#"{"error":{"code":14}}"#),
        sj(
            "edge-receipt-kind-number",
            r#"{"deliver":{"seq":"1","receipt":{"kind":1,"msgIds":["a"]}}}"#,
        ),
        sj("edge-unknown-kind", r#"{"teleport":{}}"#),
        p("edge-empty", b""),
        // Field 99 (varint): a frame kind from the future.
        p("edge-unknown-field-99", &[0xb8, 0x06, 0x01]),
        // Send whose length runs past the end.
        p("edge-truncated", &[0x12, 0xff]),
        // Ping then Ack in one message: the last oneof field wins.
        p(
            "edge-two-kinds",
            &[0x32, 0x02, 0x08, 0x01, 0x1a, 0x02, 0x08, 0x02],
        ),
        // Ack with a 10-byte varint (u64::MAX).
        p(
            "edge-varint-max",
            &[
                0x1a, 0x0b, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        // Send with a body that is not UTF-8.
        p("edge-invalid-utf8", &[0x12, 0x04, 0x1a, 0x02, 0xff, 0xfe]),
        sp("edge-empty", b""),
        // Error with code 99: an error code from a newer node.
        sp("edge-unknown-error-code", &[0x32, 0x02, 0x08, 0x63]),
        // Deliver { receipt { kind: 5 } } and the same inside a history page: a receipt kind
        // from a newer node.
        sp(
            "edge-unknown-receipt-kind",
            &[0x1a, 0x04, 0x1a, 0x02, 0x08, 0x05],
        ),
        sp(
            "edge-unknown-receipt-kind-history",
            &[0x22, 0x06, 0x12, 0x04, 0x1a, 0x02, 0x08, 0x05],
        ),
        // Crashes found by fuzzing (kept as seeds; proto/tests/fuzz_regressions.rs has them too).
        // `encode(Json, ..)` panicked on an unknown enum value (Error.code 1000).
        sp("regress-json-unknown-enum", &[0x32, 0x03, 0x08, 0xe8, 0x07]),
    ]
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let check = by_name(target).expect("known target");
    check(bytes);
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let mut n = 0;
    for (name, f) in client_frames() {
        write(
            "client_frame_protobuf",
            name,
            &encode(Encoding::Protobuf, &f),
        );
        write("client_frame_json", name, &encode(Encoding::Json, &f));
        n += 2;
    }
    for (name, f) in server_frames() {
        write(
            "server_frame_protobuf",
            name,
            &encode(Encoding::Protobuf, &f),
        );
        write("server_frame_json", name, &encode(Encoding::Json, &f));
        n += 2;
    }
    for (target, name, bytes) in edge_cases() {
        write(target, name, &bytes);
        n += 1;
    }
    println!("wrote {n} seeds under {}", corpus_dir("").display());
}
