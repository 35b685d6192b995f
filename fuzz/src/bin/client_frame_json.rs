//! AFL++ target: `chat_fuzz::client_frame_json` on every input (see fuzz/src/checks.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        chat_fuzz::client_frame_json(data);
    });
}
