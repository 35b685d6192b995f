//! Child processes: finding the workspace's binaries, reading their ready line, stopping them,
//! and running `chatctl`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::wait::wait_until;

/// Path of a workspace binary, next to the test executable's `deps/` folder (or from
/// `CHAT_TEST_<NAME>_BIN`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "CHAT_TEST_{}_BIN",
        name.to_uppercase().replace('-', "_")
    )) {
        return PathBuf::from(p);
    }
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// The profile's target directory (`target/debug`): next to the test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir")
        .to_path_buf()
}

/// The first line a child prints on stdout, read on a thread so that a process that never
/// prints cannot hang the test; the rest is drained so it never blocks on a full pipe.
pub fn first_line(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx
}

/// SIGKILL and reap, if the child is there.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits up to `timeout` for the child to exit by itself; its status if it did (the child is
/// then gone from `child`).
pub(crate) fn wait_exit(child: &mut Option<Child>, timeout: Duration) -> Option<ExitStatus> {
    let status = wait_until("the process to exit", timeout, || {
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    })
    .ok()?;
    *child = None;
    Some(status)
}

/// Sends `signal` (`"TERM"`, `"STOP"`, ...) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Sends `signal` to every process of group `pgid` (a child started with `process_group(0)`);
/// quiet if the group is already gone.
pub(crate) fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".to_string(), format!("-{pgid}")])
        .stderr(std::process::Stdio::null())
        .status();
}

/// stdout and then stderr, as text.
fn both(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_chatctl(args: &[&str]) -> std::process::Output {
    Command::new(bin("chatctl"))
        .args(args)
        .output()
        .expect("run chatctl")
}

/// Runs `chatctl` with `args`: `Ok` with its stdout and stderr if it succeeds, `Err` with them
/// if it fails.
pub fn try_chatctl(args: &[&str]) -> Result<String, String> {
    let out = run_chatctl(args);
    let text = both(&out);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Runs `chatctl` with `args` and returns its stdout; panics with its output unless it succeeds.
pub fn chatctl(args: &[&str]) -> String {
    let out = run_chatctl(args);
    if !out.status.success() {
        panic!("chatctl {args:?} failed:\n{}", both(&out));
    }
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs the `chat` CLI with `args` and `CHAT_TOKEN` = `token`, killing it after `WAIT`:
/// (succeeded, stdout, stderr). Its output must be small (it is read once it exits).
pub fn chat_cli(token: &str, args: &[&str]) -> (bool, String, String) {
    use std::io::Read;
    let mut child = Some(
        Command::new(bin("chat"))
            .args(args)
            .env("CHAT_TOKEN", token)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn chat"),
    );
    let (mut out, mut err) = {
        let c = child.as_mut().unwrap();
        (c.stdout.take().unwrap(), c.stderr.take().unwrap())
    };
    let status = wait_exit(&mut child, crate::WAIT);
    kill(&mut child);
    let (mut o, mut e) = (String::new(), String::new());
    let _ = out.read_to_string(&mut o);
    let _ = err.read_to_string(&mut e);
    (status.is_some_and(|s| s.success()), o, e)
}
