//! What every chat process does the same way, whatever its job: load one typed configuration
//! (`config`), log (`log`), stop on a signal (`signal`), answer `/healthz`, `/readyz` and
//! `/metrics` (`admin`), and speak TLS on an HTTP listener (`tls`). The node and the router use
//! it; neither copies it.

pub mod admin;
pub mod config;
pub mod log;
pub mod signal;
pub mod tls;
