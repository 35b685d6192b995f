//! Wire types of the chat cluster, generated from `proto/chat/v1/*.proto` with prost, and the one
//! codec both ends use: protobuf in binary WebSocket frames, canonical proto3 JSON in text frames.

/// Modules nest like the proto packages, because generated code names other packages by
/// relative path (`chat.store.v1` refers to `super::super::v1`).
pub mod chat {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/chat.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/chat.v1.serde.rs"));
    }
    pub mod store {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/chat.store.v1.rs"));
        }
    }
    pub mod cluster {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/chat.cluster.v1.rs"));
        }
    }
}

pub mod ids;

/// Node-to-node frames over QUIC (`chat.cluster.v1`).
pub use chat::cluster::v1 as cluster;

/// Stored records (`chat.store.v1`).
pub use chat::store::v1 as store;
/// The client protocol (`chat.v1`).
pub use chat::v1;

use serde::{de::DeserializeOwned, Serialize};

/// How a frame is encoded on the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary frame: protobuf.
    Protobuf,
    /// Text frame: proto3 JSON.
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a frame at all: bad JSON or protobuf, wrong field types, unknown fields.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Well-formed, but of a kind this side does not know (a newer peer, or a typo in a frame name).
    #[error("unknown frame kind {0:?}")]
    Unknown(String),
}

/// The JSON names of the frame kinds of a `ClientFrame`.
pub const CLIENT_FRAME_KINDS: &[&str] = &[
    "hello", "send", "ack", "read", "history", "ping", "typing", "block", "presence", "group",
    "media",
];
/// The JSON names of the frame kinds of a `ServerFrame`.
pub const SERVER_FRAME_KINDS: &[&str] = &[
    "welcome",
    "sent",
    "deliver",
    "history",
    "pong",
    "error",
    "redirect",
    "typing",
    "blocked",
    "presence",
    "presenceUpdate",
    "readState",
    "group",
    "media",
];

/// A frame type: a message with one `frame` oneof.
pub trait Frame: prost::Message + Serialize + DeserializeOwned + Default + Clone {
    /// JSON names of the oneof's variants.
    const KINDS: &'static [&'static str];
    /// JSON names of the frame's fields outside the oneof.
    const OTHER_KEYS: &'static [&'static str] = &[];
    /// Whether the oneof is set (a protobuf frame of an unknown kind decodes with it unset).
    fn has_frame(&self) -> bool;
    /// Sets every enum field holding a value this version does not know to 0 (`*_UNSPECIFIED`).
    /// Protobuf keeps such values (a newer peer's error code or receipt kind), but the JSON form
    /// names enum values and cannot write them: `encode` clears them before writing JSON.
    fn clear_unknown_enums(&mut self);
}

impl Frame for v1::ClientFrame {
    const KINDS: &'static [&'static str] = CLIENT_FRAME_KINDS;
    const OTHER_KEYS: &'static [&'static str] = &["active"];
    fn has_frame(&self) -> bool {
        self.frame.is_some()
    }
    fn clear_unknown_enums(&mut self) {
        if let Some(v1::client_frame::Frame::Typing(t)) = &mut self.frame {
            if v1::TypingState::try_from(t.state).is_err() {
                t.state = 0;
            }
        }
    }
}

impl Frame for v1::ServerFrame {
    const KINDS: &'static [&'static str] = SERVER_FRAME_KINDS;
    fn has_frame(&self) -> bool {
        self.frame.is_some()
    }
    fn clear_unknown_enums(&mut self) {
        use v1::{
            deliver, server_frame::Frame as F, Deliver, ErrorCode, GroupEventKind, ReceiptKind,
            TypingState,
        };
        fn known<E: TryFrom<i32>>(v: &mut i32) {
            if E::try_from(*v).is_err() {
                *v = 0;
            }
        }
        fn in_deliver(d: &mut Deliver) {
            match &mut d.entry {
                Some(deliver::Entry::Receipt(r)) => known::<ReceiptKind>(&mut r.kind),
                Some(deliver::Entry::GroupEvent(e)) => known::<GroupEventKind>(&mut e.kind),
                _ => {}
            }
        }
        match &mut self.frame {
            Some(F::Error(e)) => known::<ErrorCode>(&mut e.code),
            Some(F::Typing(t)) => known::<TypingState>(&mut t.state),
            Some(F::Deliver(d)) => in_deliver(d),
            Some(F::History(h)) => h.entries.iter_mut().for_each(in_deliver),
            Some(
                F::Welcome(_)
                | F::Sent(_)
                | F::Pong(_)
                | F::Redirect(_)
                | F::Blocked(_)
                | F::Presence(_)
                | F::PresenceUpdate(_)
                | F::ReadState(_)
                | F::Group(_)
                | F::Media(_),
            )
            | None => {}
        }
    }
}

/// Decodes one frame. A frame whose kind is unknown is `DecodeError::Unknown`, anything else that
/// fails is `DecodeError::Malformed`, so the receiver can answer each with its own error code.
pub fn decode<F: Frame>(encoding: Encoding, data: &[u8]) -> Result<F, DecodeError> {
    let frame: F = match encoding {
        Encoding::Protobuf => F::decode(data).map_err(|e| DecodeError::Malformed(e.to_string()))?,
        Encoding::Json => match serde_json::from_slice::<F>(data) {
            Ok(f) => f,
            Err(e) => {
                // Tell a frame of an unknown kind from a malformed one by its top-level keys.
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_slice::<serde_json::Value>(data)
                {
                    if let Some(k) = map.keys().find(|k| {
                        !F::KINDS.contains(&k.as_str()) && !F::OTHER_KEYS.contains(&k.as_str())
                    }) {
                        return Err(DecodeError::Unknown(k.clone()));
                    }
                }
                return Err(DecodeError::Malformed(e.to_string()));
            }
        },
    };
    if !frame.has_frame() {
        return Err(DecodeError::Unknown(match encoding {
            Encoding::Protobuf => "unknown protobuf field".into(),
            Encoding::Json => "empty frame".into(),
        }));
    }
    Ok(frame)
}

/// Encodes one frame. In JSON, an enum value this version does not know (kept by a protobuf
/// decode, say an error code from a newer node) is written as 0, `*_UNSPECIFIED`: the JSON form
/// names enum values, and the generated serializer fails on one it has no name for.
pub fn encode<F: Frame>(encoding: Encoding, frame: &F) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => frame.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(frame).unwrap_or_else(|_| {
            let mut known = frame.clone();
            known.clear_unknown_enums();
            serde_json::to_vec(&known).expect("generated types serialize known enum values")
        }),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::v1::{client_frame, ClientFrame, Send};
    use super::*;

    fn send_frame() -> ClientFrame {
        ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                client_msg_id: "c1".into(),
                to: "bob".into(),
                body: "hi".into(),
                from: String::new(),
                group: String::new(),
                attachment: None,
            })),
            active: false,
        }
    }

    #[test]
    fn json_form_is_camel_case_and_round_trips() {
        let f = send_frame();
        let json = String::from_utf8(encode(Encoding::Json, &f)).unwrap();
        assert_eq!(
            json,
            r#"{"send":{"clientMsgId":"c1","to":"bob","body":"hi"}}"#
        );
        assert_eq!(
            decode::<ClientFrame>(Encoding::Json, json.as_bytes()),
            Ok(f)
        );
        // The proto field names are accepted too.
        let snake = br#"{"send":{"client_msg_id":"c1","to":"bob","body":"hi"}}"#;
        assert_eq!(
            decode::<ClientFrame>(Encoding::Json, snake),
            Ok(send_frame())
        );
    }

    #[test]
    fn protobuf_round_trips() {
        let f = send_frame();
        assert_eq!(
            decode::<ClientFrame>(Encoding::Protobuf, &encode(Encoding::Protobuf, &f)),
            Ok(f)
        );
    }

    #[test]
    fn every_frame_kind_name_is_known_to_the_json_decoder() {
        for k in CLIENT_FRAME_KINDS {
            let json = format!("{{\"{k}\":{{}}}}");
            assert!(
                decode::<ClientFrame>(Encoding::Json, json.as_bytes()).is_ok(),
                "{k}"
            );
        }
    }

    /// Found by fuzzing (server_frame_protobuf): a protobuf frame with an enum value this version
    /// does not know decodes (prost keeps it), and encoding it as JSON panicked in `encode`.
    #[test]
    fn unknown_enum_values_are_written_as_unspecified_in_json() {
        use super::v1::{deliver, server_frame, Deliver, HistoryPage, Receipt, ServerFrame};
        // Error { code: 99 }
        let f = decode::<ServerFrame>(Encoding::Protobuf, &[0x32, 0x02, 0x08, 0x63]).unwrap();
        let json = encode(Encoding::Json, &f);
        assert_eq!(json, br#"{"error":{}}"#);
        // Protobuf keeps the value.
        assert_eq!(encode(Encoding::Protobuf, &f), [0x32, 0x02, 0x08, 0x63]);

        let receipt = |kind| {
            Some(deliver::Entry::Receipt(Receipt {
                kind,
                by: "bob".into(),
                msg_ids: vec!["m1".into()],
                ts: 1,
            }))
        };
        let page = |kind| ServerFrame {
            frame: Some(server_frame::Frame::History(HistoryPage {
                request_id: "h1".into(),
                entries: vec![
                    Deliver {
                        seq: 2,
                        entry: receipt(kind),
                    },
                    Deliver {
                        seq: 1,
                        entry: receipt(2),
                    },
                ],
                more: false,
            })),
        };
        let json = encode(Encoding::Json, &page(7));
        assert_eq!(decode::<ServerFrame>(Encoding::Json, &json), Ok(page(0)));
    }

    #[test]
    fn bad_frames_are_classified() {
        let unknown = decode::<ClientFrame>(Encoding::Json, br#"{"teleport":{}}"#);
        assert_eq!(unknown, Err(DecodeError::Unknown("teleport".into())));
        assert!(matches!(
            decode::<ClientFrame>(Encoding::Json, b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ClientFrame>(Encoding::Json, br#"{"send":{"to":5}}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ClientFrame>(Encoding::Json, b"{}"),
            Err(DecodeError::Unknown(_))
        ));
        // Protobuf field 99 (varint): a frame kind from the future.
        assert!(matches!(
            decode::<ClientFrame>(Encoding::Protobuf, &[0xb8, 0x06, 0x01]),
            Err(DecodeError::Unknown(_))
        ));
        assert!(matches!(
            decode::<ClientFrame>(Encoding::Protobuf, &[0x12, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
