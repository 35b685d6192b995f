//! The summary table a run prints, and the evidence for each violation: the seed, the smallest
//! history slice, and every node's log lines from two seconds before to two seconds after the
//! slice's first event (node logs carry wall-clock times; the run's clock knows its start).

use std::fmt::Write as _;
use std::path::Path;

use crate::checker::Report;
use crate::history::Micros;

/// Log lines kept per node around one example.
const LOG_LINES: usize = 40;
const WINDOW_US: u64 = 2_000_000;

fn secs(us: u64) -> String {
    format!("{:.1} s", us as f64 / 1e6)
}

/// The summary table (markdown, so it pastes into an issue as is).
pub fn table(r: &Report, fault_phase_secs: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "chaos run: profile {}, seed {}, {fault_phase_secs:.0} s of faults",
        r.profile, r.seed
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| measure | value |");
    let _ = writeln!(s, "| --- | --- |");
    let rows: Vec<(&str, String)> = vec![
        ("sent (distinct messages)", r.sent.to_string()),
        ("acknowledged (✓)", r.acknowledged.to_string()),
        ("of them to groups (✓)", r.group_acknowledged.to_string()),
        ("delivered (to every device)", r.delivered.to_string()),
        ("lost", r.lost.to_string()),
        (
            "own copies lost (multi-device)",
            r.own_copies_lost.to_string(),
        ),
        ("duplicated (server-side)", r.duplicated.to_string()),
        (
            "re-sent after reconnect, never acked (not judged)",
            r.redelivered_unacked.to_string(),
        ),
        ("suppressed by clients", r.suppressed.to_string()),
        ("reordered", r.reordered.to_string()),
        ("seq went back on a connection", r.non_monotonic.to_string()),
        ("gaps", r.gaps.to_string()),
        ("seq conflicts", r.seq_conflicts.to_string()),
        (
            "inbox went backwards on reconnect",
            r.inbox_regressed.to_string(),
        ),
        ("foreign", r.foreign.to_string()),
        ("receipts lost", r.receipts_lost.to_string()),
        (
            "sends unresolved at the end",
            r.unresolved_sends.to_string(),
        ),
        (
            "send attempts unanswered",
            r.unanswered_attempts.to_string(),
        ),
        ("definitive send errors", r.definitive_errors.to_string()),
        (
            "✓ while the node's disk was full",
            r.acked_while_full.to_string(),
        ),
        ("failed reported to senders", r.failed_reported.to_string()),
        (
            "hostile cases (skipped)",
            format!("{} ({})", r.hostile_cases, r.hostile_skipped),
        ),
        ("rebalances completed", r.rebalances_completed.to_string()),
        ("node crashes", r.node_crashes.to_string()),
        (
            "fail-stops on a full disk (restarted)",
            r.storage_stops.to_string(),
        ),
        (
            "faults that did not run as planned",
            r.faults_not_ok.to_string(),
        ),
        ("reconnects", r.reconnects.to_string()),
        (
            "longest unavailability per user: max / p99",
            format!(
                "{} / {}",
                secs(r.unavailability_max_us),
                secs(r.unavailability_p99_us)
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let faults: Vec<String> = r
        .faults_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(s, "\nfaults injected: {}", faults.join(", "));
    let failures: Vec<String> = r
        .connect_failures
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "connect failures: {}",
        if failures.is_empty() {
            "none".into()
        } else {
            failures.join(", ")
        }
    );
    let codes: Vec<String> = r
        .send_errors_by_code
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "send errors by code: {}",
        if codes.is_empty() {
            "none".into()
        } else {
            codes.join(", ")
        }
    );
    if r.violations.is_empty() {
        let _ = writeln!(s, "violations: none");
    } else {
        let v: Vec<String> = r
            .violations
            .iter()
            .map(|v| format!("{} {}", v.invariant, v.count))
            .collect();
        let _ = writeln!(s, "VIOLATIONS: {}", v.join(", "));
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

/// Every violation's examples with their slices and the node log lines around them.
pub fn evidence(r: &Report, run_dir: &Path, start_unix_us: u64) -> String {
    let mut s = String::new();
    let logs = node_logs(run_dir);
    for v in &r.violations {
        let _ = writeln!(
            s,
            "\n=== {} ({} in all; seed {}) ===",
            v.invariant, v.count, r.seed
        );
        for ex in &v.examples {
            let _ = writeln!(s, "\n--- {}", ex.summary);
            for l in &ex.slice {
                let _ = writeln!(s, "  {l}");
            }
            if ex.slice.is_empty() {
                continue;
            }
            let at = start_unix_us + ex.first_at;
            for (name, text) in &logs {
                let lines = around(text, at);
                if !lines.is_empty() {
                    let _ = writeln!(
                        s,
                        "  [{name} ±2 s around +{:.3}s]",
                        ex.first_at as f64 / 1e6
                    );
                    for l in lines {
                        let _ = writeln!(s, "    {l}");
                    }
                }
            }
        }
    }
    s
}

/// `(file name, text)` of the node, router and etcd logs in the run dir.
fn node_logs(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with("etcd"))
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().to_string(),
                std::fs::read_to_string(e.path()).ok()?,
            ))
        })
        .collect();
    v.sort();
    v
}

/// Lines of `text` whose leading timestamp is within ±2 s of `at_us` (Unix µs).
fn around(text: &str, at_us: u64) -> Vec<&str> {
    let (from, to) = (at_us.saturating_sub(WINDOW_US), at_us + WINDOW_US);
    let mut out = Vec::new();
    for l in text.lines() {
        match log_time_us(l) {
            Some(t) if t >= from && t <= to => out.push(l),
            Some(t) if t > to => break,
            _ => {}
        }
        if out.len() >= LOG_LINES {
            break;
        }
    }
    out
}

/// The Unix time (µs) of a log line starting with an RFC 3339 UTC time
/// (`2025-12-01T23:10:00.123456Z`), as `tracing-subscriber` writes it.
pub fn log_time_us(line: &str) -> Option<Micros> {
    let t = line.trim_start().get(..27.min(line.trim_start().len()))?;
    let num = |a: usize, b: usize| t.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if t.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let frac = t.get(20..).unwrap_or("");
    let digits: String = frac
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .take(6)
        .collect();
    let us = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32)
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3_600 + mi * 60 + sec;
    u64::try_from(secs * 1_000_000 + us).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_parse() {
        assert_eq!(
            log_time_us("1970-01-01T00:00:01.500000Z  INFO x"),
            Some(1_500_000)
        );
        assert_eq!(
            log_time_us("2024-03-01T00:00:00Z INFO"),
            Some(1_709_251_200_000_000)
        );
        assert_eq!(log_time_us("garbage"), None);
        let text = "1970-01-01T00:00:01.000000Z a\n1970-01-01T00:00:05.000000Z b\n1970-01-01T00:00:09.000000Z c";
        assert_eq!(
            around(text, 5_500_000),
            vec!["1970-01-01T00:00:05.000000Z b"]
        );
    }
}
