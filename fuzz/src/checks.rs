//! What each fuzz target checks on one input. The AFL++ targets (fuzz/src/bin/) call these, and
//! so do the tests that replay the corpus without AFL: fuzz/tests/corpus.rs, and
//! proto/tests/fuzz_regressions.rs, which includes this file by path so that `cargo test` at the
//! root replays the corpus too. Any panic here is a bug.
//!
//! Uses nothing but `chat_proto` and std, so that it compiles inside both crates.

use chat_proto::ids::{id_problem, DEFAULT_MAX_ID_BYTES};
use chat_proto::v1::{server_frame, ClientFrame, Error as ErrorFrame, ServerFrame};
use chat_proto::{decode, encode, DecodeError, Encoding, Frame};
use std::fmt::Debug;

/// Bytes of a binary WebSocket frame from a client, as the node decodes and checks them.
pub fn client_frame_protobuf(data: &[u8]) {
    if let Some(f) = check::<ClientFrame>(Encoding::Protobuf, data) {
        node_checks(&f);
    }
}

/// Bytes of a text WebSocket frame from a client, as the node decodes and checks them. A
/// WebSocket text frame is UTF-8 by the time it is decoded, but the decoder takes bytes, so
/// invalid UTF-8 is fuzzed as well.
pub fn client_frame_json(data: &[u8]) {
    if let Some(f) = check::<ClientFrame>(Encoding::Json, data) {
        node_checks(&f);
    }
}

/// Bytes of a binary WebSocket frame from a node, as a client decodes them.
pub fn server_frame_protobuf(data: &[u8]) {
    check::<ServerFrame>(Encoding::Protobuf, data);
}

/// Bytes of a text WebSocket frame from a node, as a client decodes them.
pub fn server_frame_json(data: &[u8]) {
    check::<ServerFrame>(Encoding::Json, data);
}

/// The target that replays a corpus directory, by the directory's name.
pub fn by_name(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "client_frame_protobuf" => client_frame_protobuf,
        "client_frame_json" => client_frame_json,
        "server_frame_protobuf" => server_frame_protobuf,
        "server_frame_json" => server_frame_json,
        _ => return None,
    })
}

/// Every target, by name (also the names of the corpus directories).
pub const TARGETS: &[&str] = &[
    "client_frame_protobuf",
    "client_frame_json",
    "server_frame_protobuf",
    "server_frame_json",
];

fn other(enc: Encoding) -> Encoding {
    match enc {
        Encoding::Protobuf => Encoding::Json,
        Encoding::Json => Encoding::Protobuf,
    }
}

/// Decodes `data`; a frame that decodes must
/// - round-trip in the same encoding: encode, decode again, equal; and re-encoding that gives
///   the same bytes (the encoding of a decoded frame is canonical);
/// - round-trip through the other encoding (the node answers in the encoding of the client's
///   latest frame, and JSON and protobuf are two forms of the same frame), its JSON being UTF-8
///   (the node and the client put it into a text WebSocket message with `expect`); the one
///   change allowed is an unknown enum value becoming 0 on the way to JSON.
///
/// A frame that does not decode must be refused with an error the node can put into its `error`
/// frame, in either encoding.
fn check<F: Frame + PartialEq + Debug>(enc: Encoding, data: &[u8]) -> Option<F> {
    let frame = match decode::<F>(enc, data) {
        Ok(f) => f,
        Err(e) => {
            refusal(e);
            return None;
        }
    };
    assert!(frame.has_frame(), "decode returned a frame with no kind");

    let bytes = encode(enc, &frame);
    let again = decode::<F>(enc, &bytes).unwrap_or_else(|e| {
        panic!("{enc:?} re-encoding of {frame:?} does not decode: {e} (bytes {bytes:?})")
    });
    assert_eq!(again, frame, "{enc:?} round trip changed the frame");
    assert_eq!(
        encode(enc, &again),
        bytes,
        "{enc:?} encoding of a decoded frame is not stable"
    );
    utf8_if_json(enc, &bytes);

    let to = other(enc);
    let bytes = encode(to, &frame);
    utf8_if_json(to, &bytes);
    let across = decode::<F>(to, &bytes).unwrap_or_else(|e| {
        panic!("{to:?} encoding of {frame:?} does not decode: {e} (bytes {bytes:?})")
    });
    // JSON has no form for an enum value this version does not know (protobuf keeps it):
    // `encode` writes it as 0 (UNSPECIFIED), and nothing else may change.
    let mut expect = frame.clone();
    expect.clear_unknown_enums();
    assert_eq!(across, expect, "{enc:?} -> {to:?} changed the frame");
    Some(frame)
}

/// The checks of a decoded client frame that live in chat-proto (the node's `check_id` is
/// `chat_proto::ids::id_problem`; its body check and token verification are in chat-node, which
/// the fuzz targets must not depend on). An id it accepts must be what its rule says.
fn node_checks(frame: &ClientFrame) {
    use chat_proto::v1::client_frame::Frame as F;
    let max = DEFAULT_MAX_ID_BYTES;
    if let Some(F::Send(s)) = &frame.frame {
        for id in [&s.client_msg_id, &s.to, &s.from] {
            match id_problem(id, max) {
                Some(reason) => assert!(!reason.is_empty(), "empty reason for {id:?}"),
                None => assert!(
                    !id.is_empty()
                        && id.len() <= max
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@+=/".contains(&b)),
                    "id_problem accepts {id:?}"
                ),
            }
        }
    }
}

fn utf8_if_json(enc: Encoding, bytes: &[u8]) {
    if enc == Encoding::Json {
        if let Err(e) = std::str::from_utf8(bytes) {
            panic!("JSON encoding is not UTF-8: {e}");
        }
    }
}

/// What the node does with a frame it cannot decode: an `error` frame (BAD_FRAME or
/// UNKNOWN_FRAME) whose message is the decode error's text, sent in the client's encoding.
fn refusal(e: DecodeError) {
    let code = match e {
        DecodeError::Malformed(_) => 1, // ERROR_CODE_BAD_FRAME
        DecodeError::Unknown(_) => 2,   // ERROR_CODE_UNKNOWN_FRAME
    };
    let answer = ServerFrame {
        frame: Some(server_frame::Frame::Error(ErrorFrame {
            code,
            message: e.to_string(),
            r#ref: String::new(),
            retry_after_ms: 0,
        })),
    };
    for enc in [Encoding::Protobuf, Encoding::Json] {
        let bytes = encode(enc, &answer);
        utf8_if_json(enc, &bytes);
        let back = decode::<ServerFrame>(enc, &bytes)
            .unwrap_or_else(|e| panic!("{enc:?} error frame does not decode: {e}"));
        assert_eq!(back, answer, "{enc:?} error frame round trip");
    }
}
