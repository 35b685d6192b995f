//! `chat-chaos`: one chaos run against a fresh local cluster (etcd, nodes, router) built from the
//! binaries next to this one; prints the summary table (and the evidence of any violation) and
//! exits non-zero on any violation. `chat-chaos check RUN.json` judges a saved run again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chat_chaos::run::{run, Options};
use chat_chaos::schedule::Profile;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chat-chaos",
    about = "Chaos suite for the chat cluster (needs root)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// `short` (~3 minutes, every fault once) or `long` (--duration of faults, 20+ moves).
    #[arg(long, value_enum, default_value = "short")]
    profile: Profile,
    /// Length of the fault phase, e.g. `30m`, `90s`, `1h` (default: the profile's).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Seed of the schedule and the workload (default: random; always printed).
    #[arg(long, env = "CHAT_CHAOS_SEED")]
    seed: Option<u64>,
    /// Messages per second over all devices (default: the profile's, 150).
    #[arg(long)]
    rate: Option<f64>,
    /// Simulated users (default: 200 short, 1000 long).
    #[arg(long)]
    users: Option<usize>,
    /// Keep the run dir (logs, histories, node data) even when the run is clean.
    #[arg(long)]
    keep_dir: bool,
    /// Size of each node's tmpfs, in MiB.
    #[arg(long, default_value_t = 512)]
    tmpfs_mib: u64,
    /// Where to create the run dir (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Environment for every node, `KEY=VALUE` (repeatable), e.g.
    /// `CHAT_NODE_STORAGE__MIN_FREE_MIB=0` to let RocksDB itself run out of space.
    #[arg(long = "node-env", value_parser = parse_env)]
    node_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a saved run (`run.json` in a kept run dir) again and print its table.
    Check { run_json: PathBuf },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in {s:?} (s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Check { run_json }) = args.cmd {
        let text =
            std::fs::read_to_string(&run_json).with_context(|| run_json.display().to_string())?;
        let data: chat_chaos::history::RunData = serde_json::from_str(&text)?;
        let report = chat_chaos::checker::check(&data);
        let secs = data.fault_phase_end as f64 / 1e6;
        print!("{}", chat_chaos::report::table(&report, secs));
        if let Some(dir) = run_json.parent() {
            print!(
                "{}",
                chat_chaos::report::evidence(&report, dir, data.start_unix_us)
            );
        }
        std::process::exit(if report.is_clean() { 0 } else { 1 });
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    println!("chat-chaos: seed {seed} (rerun with --seed {seed})");
    let opts = Options {
        duration: args.duration,
        users: args.users,
        rate: args.rate,
        keep_dir: args.keep_dir,
        tmpfs_mib: args.tmpfs_mib,
        base_dir: args.dir,
        node_env: args.node_env,
        ..Options::new(args.profile, seed)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = run(opts) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    // Tasks still holding the cluster are dropped here, which stops the processes they hold.
    rt.shutdown_timeout(Duration::from_secs(10));
    let outcome = outcome?;
    print!("{}", outcome.text);
    match &outcome.run_dir {
        Some(d) => println!("run dir (kept): {}", d.display()),
        None => println!("run dir removed (clean run; --keep-dir keeps it)"),
    }
    println!("seed {seed}");
    if !outcome.report.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}
