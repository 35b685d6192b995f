//! What every chat process does the same way, whatever its job: load one typed configuration
//! (`config`), log (`log`), stop on a signal (`signal`), and answer `/healthz`, `/readyz` and
//! `/metrics` (`admin`). The node and the router use it; neither copies it.

pub mod admin;
pub mod config;
pub mod log;
pub mod signal;
