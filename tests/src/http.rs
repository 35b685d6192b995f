//! A minimal blocking HTTP/1.0 client for the admin, router and etcd health endpoints.

use std::time::Duration;

/// A plain HTTP/1.0 GET on loopback: the whole response, or `None` if the server is not there.
fn http_raw(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

fn http_status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// `(status, body)` of a GET, or `None` if the server is not there.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let r = http_raw(url)?;
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((http_status(&r)?, body))
}

/// `(status, Location header)` of a GET (for redirects).
pub fn http_location(url: &str) -> Option<(u16, Option<String>)> {
    let r = http_raw(url)?;
    let location = r
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(|l| l.trim().to_string());
    Some((http_status(&r)?, location))
}

/// Whether `GET url` answers 200.
pub fn is_ok(url: &str) -> bool {
    http_get(url).is_some_and(|(st, _)| st == 200)
}

/// The Prometheus text at `base_url/metrics` (a node's admin URL, or a router's URL), which must
/// answer 200.
pub fn metrics_text(base_url: &str) -> String {
    let (st, body) = http_get(&format!("{base_url}/metrics")).expect("metrics");
    assert_eq!(st, 200, "{base_url}/metrics");
    body
}

/// Whether the Prometheus text at `admin_url/metrics` contains `line`.
pub fn metrics_contain(admin_url: &str, line: &str) -> bool {
    http_get(&format!("{admin_url}/metrics")).is_some_and(|(_, b)| b.contains(line))
}
