//! The checks on what the hostile clients and the nemesis recorded: hostile successes, node
//! crashes, faults that did not heal; and how long users were cut off.

use std::collections::BTreeMap;

use super::{slice, Report};
use crate::history::{Event, FaultKind, HostileCase, Micros, RunData};

pub(super) fn hostile(run: &RunData, r: &mut Report) {
    use HostileCase::*;
    for h in &run.hostile {
        r.hostile_cases += 1;
        if h.skipped {
            r.hostile_skipped += 1;
            continue;
        }
        let line = vec![(
            h.at,
            format!("{} {:?} as {}: {:?}", slice::secs(h.at), h.case, h.user, h),
        )];
        if let Some(w) = h.welcomed_as.as_ref().filter(|w| **w != h.user) {
            r.violate(
                "hostile",
                format!("{:?}: a token for {} was welcomed as {w}", h.case, h.user),
                line.clone(),
            );
        }
        if matches!(h.case, BadSignature | ExpiredToken) && h.welcomed_as.is_some() {
            r.violate(
                "hostile",
                format!("{:?}: the node accepted the token", h.case),
                line.clone(),
            );
        }
        if h.case == ForgedFrom && h.acked > 0 {
            r.violate(
                "hostile",
                format!("a Send with a forged `from` got {} ✓", h.acked),
                line.clone(),
            );
        }
        if h.case == ForeignMedia && h.acked > 0 {
            r.violate(
                "hostile",
                format!("a Send naming a file never given got {} ✓", h.acked),
                line.clone(),
            );
        }
        if h.case == StealMedia && h.acked > 0 {
            r.violate(
                "hostile",
                format!("{} download URLs for a file not in the inbox", h.acked),
                line.clone(),
            );
        }
        if h.foreign_entries > 0 {
            r.violate(
                "hostile",
                format!(
                    "{:?}: got {} entries that were not its own",
                    h.case, h.foreign_entries
                ),
                line.clone(),
            );
        }
        let expected: &[&str] = match h.case {
            MalformedProtobuf | MalformedJson => &["BAD_FRAME"],
            OversizeFrame => &["FRAME_TOO_LARGE"],
            BadSignature => &["TOKEN_INVALID"],
            ExpiredToken => &["TOKEN_EXPIRED"],
            ForgedFrom => &["PERMISSION_DENIED"],
            ForeignMedia | StealMedia => &["UNKNOWN_MEDIA"],
            _ => &[],
        };
        if !expected.is_empty() && !h.errors.iter().any(|e| expected.contains(&e.as_str())) {
            r.warnings.push(format!(
                "hostile {:?}: expected {expected:?}, got errors {:?} (closed: {:?}) {}",
                h.case, h.errors, h.closed, h.detail
            ));
        }
        let must_close = matches!(h.case, HugeFrame | InvalidUtf8Text | StopReading);
        if must_close && h.closed.is_none() {
            r.warnings.push(format!(
                "hostile {:?}: the connection was not closed ({})",
                h.case, h.detail
            ));
        }
    }
}

pub(super) fn nemesis(run: &RunData, r: &mut Report) {
    for f in &run.nemesis.faults {
        if f.ok {
            *r.faults_by_kind.entry(format!("{:?}", f.kind)).or_default() += 1;
        } else {
            r.faults_not_ok += 1;
        }
        if f.ok && matches!(f.kind, FaultKind::AddNode | FaultKind::RemoveNode) {
            r.rebalances_completed += 1;
        }
    }
    r.storage_stops = run.nemesis.storage_stops.len();
    for c in &run.nemesis.crashes {
        r.node_crashes += 1;
        let mut sl = vec![(
            c.at,
            format!(
                "{} {} exited by itself: {}",
                slice::secs(c.at),
                c.node,
                c.status
            ),
        )];
        sl.extend(c.log_tail.lines().map(|l| (c.at, format!("    {l}"))));
        r.violate(
            "node_crash",
            format!("{} exited without being killed ({})", c.node, c.status),
            sl,
        );
    }
    for f in &run.nemesis.findings {
        r.violate("nemesis", f.clone(), Vec::new());
    }
}

pub(super) fn availability(run: &RunData, r: &mut Report) {
    let mut per_user: BTreeMap<&str, u64> = BTreeMap::new();
    for h in &run.devices {
        let mut down_since: Option<Micros> = None;
        let mut worst = 0u64;
        for rec in &h.records {
            match rec.event {
                Event::Closed { .. } => {
                    r.reconnects += 1;
                    down_since.get_or_insert(rec.at);
                }
                Event::ConnectFailed { ref error } => {
                    *r.connect_failures.entry(failure_kind(error)).or_default() += 1;
                }
                Event::Connected { .. } => {
                    if let Some(t) = down_since.take() {
                        worst = worst.max(rec.at.saturating_sub(t));
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = down_since {
            // Still down at the end: the end-of-run close is not an outage.
            if run.end.saturating_sub(t) > 2_000_000 {
                worst = worst.max(run.end.saturating_sub(t));
            }
        }
        let e = per_user.entry(h.user.as_str()).or_default();
        *e = (*e).max(worst);
    }
    let mut v: Vec<u64> = per_user.into_values().collect();
    v.sort_unstable();
    r.unavailability_max_us = v.last().copied().unwrap_or(0);
    r.unavailability_p99_us = quantile(&v, 0.99);
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A connection failure's kind, without the details that differ every time.
fn failure_kind(e: &str) -> String {
    if let Some(rest) = e.strip_prefix("the node refused: ") {
        return format!("refused {}", rest.split(':').next().unwrap_or(""));
    }
    if let Some((_, status)) = e.split_once("HTTP error: ") {
        return format!("router {}", status.split_whitespace().next().unwrap_or(""));
    }
    if e.contains("Connection refused") {
        return "connection refused".into();
    }
    if e.contains("timed out") {
        return "timed out".into();
    }
    e.chars().take(40).collect()
}
