//! AFL++ target: `chat_fuzz::server_frame_protobuf` on every input (see fuzz/src/checks.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        chat_fuzz::server_frame_protobuf(data);
    });
}
