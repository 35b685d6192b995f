//! Chaos suite for the chat cluster, Jepsen style: workload clients record histories, a nemesis
//! injects real faults (processes, network, disk, moves of the ring) on a seeded schedule, and a
//! pure checker judges the histories afterwards.
//!
//! Modules, one job each: [`history`] (what is recorded), [`checker`] (the judge, no I/O),
//! [`schedule`] (the seeded plan, no I/O), [`cluster`] (processes, ports, tmpfs), [`netfault`]
//! (nftables), [`nemesis`] (runs the plan), [`workload`] (honest devices), [`hostile`] and
//! [`rawws`] (hostile connections), [`report`] (the table and the evidence), [`run`] (the phases).

pub mod checker;
pub mod cluster;
pub mod history;
pub mod hostile;
pub mod nemesis;
pub mod netfault;
pub mod rawws;
pub mod report;
pub mod run;
pub mod schedule;
pub mod workload;

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Setup(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("`{cmd}` failed: {out}")]
    Command { cmd: String, out: String },
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

pub type Result<T> = std::result::Result<T, ChaosError>;

/// Runs a command to completion within `timeout` (a command talking to a partitioned or dead
/// etcd must not hang the nemesis); its stdout on success.
pub fn run_cmd(
    program: &std::path::Path,
    args: &[String],
    timeout: std::time::Duration,
) -> Result<String> {
    use std::process::{Command, Stdio};
    let shown = format!("{} {}", program.display(), args.join(" "));
    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(program)
        .args(args)
        // An error's message, not anyhow's backtrace of it.
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChaosError::Timeout(shown));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        Err(ChaosError::Command {
            cmd: shown,
            out: format!("{status}: {}{}", out.trim(), err.trim()),
        })
    }
}

/// True when running as root (nftables and tmpfs mounts need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
