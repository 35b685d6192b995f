//! What the media tests share: an HTTP client for the stores' URLs and the HTTP API, and
//! image-like payloads.

use std::time::Duration;

/// An HTTP client (rustls on the ring provider, as the cluster), following redirects.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An image-like payload of `n` bytes, different for each `seed`.
pub fn payload(n: usize, seed: u32) -> Vec<u8> {
    let mut x = 0x2545_f491_u32 ^ seed.wrapping_mul(0x9e37_79b9);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
