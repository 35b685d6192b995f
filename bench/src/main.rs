//! `chat-bench`: drives a running cluster (or one node) like real clients and prints figures.
//! One module per scenario: `one_to_one`, `idle`, `presence`, `group`, `offline-drain`
//! (`drain`), `rebalance`, `media`.
//!
//! Cost accounting (`cost`): with `--etcd` (or `--admin`), a scenario also reads each node's
//! `process_cpu_seconds_total` and memory from its `/metrics` before and after, and this process's
//! own CPU and memory, so a reader can tell whether the load generator was the bottleneck.

mod cost;
mod drain;
mod group;
mod idle;
mod media;
mod one_to_one;
mod plot;
mod presence;
mod rebalance;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat-bench", about = "Benchmark a chat cluster (or one node)")]
struct Args {
    /// Router or node WebSocket URL (users are sent on to their home nodes).
    #[arg(long, env = "CHAT_URL", default_value = "ws://127.0.0.1:7000")]
    url: String,
    /// etcd of the cluster: the nodes' admin URLs are read from it, for CPU and memory figures.
    #[arg(long, env = "CHAT_ETCD")]
    etcd: Option<String>,
    /// The cluster's etcd prefix.
    #[arg(long, env = "CHAT_PREFIX", default_value = "/chat/")]
    prefix: String,
    /// Admin URLs of the nodes to account for (instead of, or besides, --etcd).
    #[arg(long, value_delimiter = ',')]
    admin: Vec<String>,
    /// A folder of pid files of local processes (`ops/dev-cluster.sh`'s `pids/`): `one-to-one`
    /// then splits the CPU by process (nodes, router, etcd) and per delivered message.
    #[arg(long, env = "CHAT_BENCH_PIDS")]
    pids: Option<std::path::PathBuf>,
    /// Token secret of the node (to mint tokens for bench users).
    #[arg(long, env = "CHAT_NODE_AUTH__JWT_SECRET", hide_env_values = true)]
    secret: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// 1:1 messages at a fixed aggregate rate.
    OneToOne {
        /// Sender/recipient pairs (2 connections each).
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Aggregate offered rate, messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Several rates, one step each (overrides --rate), e.g. 1000,4000,8000.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<u64>,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Message body size in bytes (at least 24).
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
        /// What recipients do with each message: nothing, acknowledge it, or also mark it read.
        #[arg(long, value_enum, default_value = "delivered")]
        receipts: one_to_one::Receipts,
        /// Also write the run as a picture (SVG): ✓ and e2e latency over time, each step shaded,
        /// and each step's delivered rate against the offered one.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// Authenticated idle connections: each node's resident memory before and after.
    Idle {
        /// Connections to open (each its own user).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Spread them over 127.0.0.1 .. 127.0.0.N as source addresses.
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Then hold them this many seconds and report the nodes' CPU while they sit idle.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Steady 1:1 traffic while the ring moves: a node added (it must be running) or removed;
    /// latency, errors and throughput before, during and after, and what the move copied.
    /// Needs --etcd.
    Rebalance {
        /// Add this node (running and registered).
        #[arg(long, conflicts_with = "remove", required_unless_present = "remove")]
        add: Option<String>,
        /// Remove this node.
        #[arg(long)]
        remove: Option<String>,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Aggregate rate, messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of traffic before the move and after it.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Also write the run as a picture (SVG): ✓ and e2e latency over the whole run, the
        /// move shaded.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// Watchers watching users that come online and go offline: updates/s, latency, CPU.
    Presence {
        /// Users watching (one connection each).
        #[arg(long, default_value_t = 200)]
        watchers: usize,
        /// Users coming and going.
        #[arg(long, default_value_t = 100)]
        actors: usize,
        /// Actors each watcher watches.
        #[arg(long, default_value_t = 20)]
        watch: usize,
        /// Changes (an actor online or offline) per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of changes.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// One group, every member connected: group sends/s, time to every member, CPU per copy.
    Group {
        /// Members (one connection each, spread over the nodes by the ring).
        #[arg(long, default_value_t = 256)]
        members: usize,
        /// Members sending (each on a second device).
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Group messages per second, all senders together.
        #[arg(long, default_value_t = 20)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Message body size in bytes (at least 24).
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
    /// Files through the blob store: uploads then downloads, MB/s and latency per file.
    Media {
        /// Uploader/recipient pairs, all at once.
        #[arg(long, default_value_t = 4)]
        pairs: usize,
        /// Files each uploader sends.
        #[arg(long, default_value_t = 10)]
        files: usize,
        /// Bytes per file.
        #[arg(long, default_value_t = 2_000_000)]
        size: usize,
    },
    /// Messages stored for offline users, then the users connect: time to drain them.
    OfflineDrain {
        /// Offline recipients (each with one sender).
        #[arg(long, default_value_t = 20)]
        users: usize,
        /// Messages in all, spread evenly over the recipients.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut admins: Vec<(String, String)> = args
        .admin
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("node{i}"), u.clone()))
        .collect();
    if let Some(etcd) = &args.etcd {
        let cfg = chat_cluster::EtcdConfig {
            endpoints: etcd.split(',').map(str::to_string).collect(),
            prefix: args.prefix.clone(),
        };
        let mut c = chat_cluster::connect(&cfg).await.context("etcd")?;
        for n in chat_cluster::list_nodes(&mut c, &cfg.prefix).await? {
            admins.push((n.id, n.admin_url));
        }
    }
    match args.scenario {
        Scenario::OneToOne {
            pairs,
            rate,
            rates,
            duration,
            body_bytes,
            receipts,
            svg,
        } => {
            let rates = if rates.is_empty() { vec![rate] } else { rates };
            one_to_one::run(
                one_to_one::Options {
                    url: args.url.clone(),
                    secret: args.secret.clone(),
                    pairs,
                    rates,
                    duration,
                    body_bytes: body_bytes.max(24),
                    receipts,
                    procs: cost::Processes::from_dir(args.pids.as_deref()),
                    svg,
                },
                &admins,
            )
            .await
        }
        Scenario::Idle {
            connections,
            sources,
            concurrency,
            hold,
        } => {
            idle::idle(
                &args.url,
                &args.secret,
                &admins,
                connections,
                sources.max(1),
                concurrency.max(1),
                hold,
            )
            .await
        }
        Scenario::Rebalance {
            add,
            remove,
            pairs,
            rate,
            settle,
            svg,
        } => {
            let Some(etcd) = &args.etcd else {
                anyhow::bail!("rebalance needs --etcd (or CHAT_ETCD)");
            };
            let change = match (add, remove) {
                (Some(node), _) => chat_cluster::rebalance::Change::Add { node, weight: 1 },
                (None, Some(node)) => chat_cluster::rebalance::Change::Remove { node },
                (None, None) => anyhow::bail!("say --add NODE or --remove NODE"),
            };
            rebalance::run(rebalance::Options {
                url: args.url.clone(),
                secret: args.secret.clone(),
                etcd: chat_cluster::EtcdConfig {
                    endpoints: etcd.split(',').map(str::to_string).collect(),
                    prefix: args.prefix.clone(),
                },
                change,
                pairs: pairs.max(1),
                rate: rate.max(1),
                settle,
                svg,
            })
            .await
        }
        Scenario::Presence {
            watchers,
            actors,
            watch,
            rate,
            duration,
        } => {
            presence::run(
                presence::Options {
                    url: args.url.clone(),
                    secret: args.secret.clone(),
                    watchers: watchers.max(1),
                    actors: actors.max(1),
                    watch,
                    rate,
                    duration,
                },
                &admins,
            )
            .await
        }
        Scenario::Group {
            members,
            senders,
            rate,
            duration,
            body_bytes,
        } => {
            group::run(
                group::Options {
                    url: args.url.clone(),
                    secret: args.secret.clone(),
                    members: members.max(2),
                    senders,
                    rate,
                    duration,
                    body_bytes,
                },
                &admins,
            )
            .await
        }
        Scenario::Media { pairs, files, size } => {
            media::run(
                media::Options {
                    url: args.url.clone(),
                    secret: args.secret.clone(),
                    pairs: pairs.max(1),
                    files: files.max(1),
                    size: size.max(1),
                },
                &admins,
            )
            .await
        }
        Scenario::OfflineDrain {
            users,
            messages,
            body_bytes,
        } => {
            drain::offline_drain(&args.url, &args.secret, users.max(1), messages, body_bytes).await
        }
    }
}

fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}
