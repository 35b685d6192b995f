//! Network faults with nftables, on loopback: one table `inet chat_chaos_<pid>` per run, one
//! base chain per fault (hooked on input, so packets are silently lost as on a real broken
//! link rather than refused locally), deleted when the fault heals and the table with the run.
//! Every node's QUIC endpoint both dials and accepts on its one bound UDP port, so dropping
//! UDP between two ports cuts every path between two nodes.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{ChaosError, Result};

pub struct NetFaults {
    table: String,
    next: u32,
    removed: bool,
}

/// One installed fault; heal it with [`NetFaults::heal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    chain: String,
}

impl NetFaults {
    /// Creates this run's table (and deletes tables of runs whose process is gone).
    pub fn new() -> Result<NetFaults> {
        clean_stale_tables();
        let table = format!("chat_chaos_{}", std::process::id());
        nft(&format!("add table inet {table}\n"))?;
        Ok(NetFaults {
            table,
            next: 0,
            removed: false,
        })
    }

    fn install(&mut self, rules: &[String]) -> Result<Rule> {
        self.next += 1;
        let chain = format!("f{}", self.next);
        let t = &self.table;
        let mut script =
            format!("add chain inet {t} {chain} {{ type filter hook input priority -10; policy accept; }}\n");
        for r in rules {
            script.push_str(&format!("add rule inet {t} {chain} {r}\n"));
        }
        nft(&script)?;
        Ok(Rule { chain })
    }

    /// Drops UDP from port `a` to port `b`, and from `b` to `a` unless `one_way`.
    pub fn partition(&mut self, a: u16, b: u16, one_way: bool) -> Result<Rule> {
        let mut rules = vec![format!("udp sport {a} udp dport {b} drop")];
        if !one_way {
            rules.push(format!("udp sport {b} udp dport {a} drop"));
        }
        self.install(&rules)
    }

    /// Drops TCP to and from etcd client port `port` (the one node using it is cut off).
    pub fn isolate_tcp_port(&mut self, port: u16) -> Result<Rule> {
        self.install(&[
            format!("tcp dport {port} drop"),
            format!("tcp sport {port} drop"),
        ])
    }

    pub fn heal(&mut self, rule: &Rule) -> Result<()> {
        let t = &self.table;
        nft(&format!(
            "flush chain inet {t} {c}\ndelete chain inet {t} {c}\n",
            c = rule.chain
        ))
    }

    /// Removes every rule (end of the run).
    pub fn heal_all(&mut self) -> Result<()> {
        nft(&format!("delete table inet {}\n", self.table))?;
        nft(&format!("add table inet {}\n", self.table))
    }
}

impl NetFaults {
    /// Deletes the table for good (end of the run).
    pub fn remove(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = nft(&format!("delete table inet {}\n", self.table));
        }
    }
}

impl Drop for NetFaults {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs an nft script.
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ChaosError::Setup(format!("nft (install nftables): {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Command {
            cmd: format!("nft -f - <<< {script:?}"),
            out: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

/// Deletes `chat_chaos_<pid>` tables whose process no longer exists.
fn clean_stale_tables() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.strip_prefix("table inet chat_chaos_") else {
            continue;
        };
        let alive = name
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = nft(&format!("delete table inet chat_chaos_{}\n", name.trim()));
        }
    }
}
