//! `chatctl`: administration of a chat cluster: certificates, the first ring, the ring and nodes
//! as they stand, and development tokens.

mod certs;
mod cluster;
mod rebalance;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use chat_cluster::EtcdConfig;
use clap::{Args as ClapArgs, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chatctl", version, about = "Chat cluster administration")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the cluster's state lives (the nodes' `cluster.etcd_endpoints` and `cluster.prefix`).
#[derive(ClapArgs, Clone)]
struct Etcd {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "CHAT_ETCD",
        value_delimiter = ',',
        default_value = chat_cluster::DEFAULT_ETCD_ENDPOINT
    )]
    etcd: Vec<String>,
    /// The cluster's key prefix in etcd.
    #[arg(long, env = "CHAT_PREFIX", default_value = chat_cluster::DEFAULT_PREFIX)]
    prefix: String,
}

impl Etcd {
    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster CA and node certificates for node-to-node mutual TLS.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Create or inspect the cluster.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// The ring: members, weights, shares, and who owns a user.
    Ring {
        #[command(subcommand)]
        cmd: RingCmd,
    },
    /// Move the ring: add or remove a node while the cluster serves, watch and end the move.
    Rebalance {
        #[command(subcommand)]
        cmd: RebalanceCmd,
    },
    /// The registered nodes and their addresses.
    Nodes {
        #[command(flatten)]
        etcd: Etcd,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue an HS256 access token for (user, device), signed with the cluster secret.
    Token {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl_secs: u64,
        /// The secret; by default taken from the environment as the node takes it.
        #[arg(long, env = "CHAT_NODE_AUTH__JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Read the secret from this file (takes precedence over --secret and
        /// CHAT_NODE_AUTH__JWT_SECRET).
        #[arg(long, env = "CHAT_NODE_AUTH__JWT_SECRET_FILE")]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create the cluster CA (`ca.pem`, `ca.key`) in DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue NODE's certificate and key (`NODE.pem`, `NODE.key`) in DIR, signed by its CA.
    Issue {
        node: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create the first ring (epoch 1) from the registered nodes and their weights. Refused if a
    /// ring exists.
    Init {
        #[command(flatten)]
        etcd: Etcd,
        /// Virtual nodes per unit of weight.
        #[arg(long, default_value_t = chat_ring::DEFAULT_VNODES_PER_WEIGHT)]
        vnodes_per_weight: u32,
        /// Copies of every user's and group's data: the owner's and N-1 followers' on the next
        /// distinct nodes clockwise. With 2, a ✓ means two nodes stored the message
        /// (docs/replication.md).
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        /// Wait until at least this many nodes are registered.
        #[arg(long, default_value_t = 1)]
        wait_nodes: usize,
        /// How long to wait for them.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum RingCmd {
    /// Show the current ring; with --user, who owns each of the users.
    Show {
        #[command(flatten)]
        etcd: Etcd,
        /// Users to place (repeatable).
        #[arg(long)]
        user: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RebalanceCmd {
    /// Start a move to a ring with NODE added (it must be registered) or removed. Refused while
    /// another move is in flight.
    Start {
        #[command(flatten)]
        etcd: Etcd,
        /// Add this node.
        #[arg(long, conflicts_with = "remove", required_unless_present = "remove")]
        add: Option<String>,
        /// Its weight (default: the weight it registered with).
        #[arg(long, requires = "add")]
        weight: Option<u32>,
        /// Remove this node.
        #[arg(long)]
        remove: Option<String>,
    },
    /// The move in flight: each node's phase, keys and bytes copied, time left.
    Status {
        #[command(flatten)]
        etcd: Etcd,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow the move in flight until it ends (progress bar in a terminal); exit 0 if it
    /// committed, 1 if it was aborted. etcd outages are ridden out (reads are retried until
    /// the timeout), since the nodes go on with the move without us.
    Wait {
        #[command(flatten)]
        etcd: Etcd,
        /// Give up waiting after this many seconds (the move goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Commit the move now if every node has seen it and copied its share (nodes commit it by
    /// themselves as soon as it may; this is for operators and scripts).
    Commit {
        #[command(flatten)]
        etcd: Etcd,
    },
    /// Abort the move in flight: the current ring stays (under a new epoch); nothing is lost,
    /// the old owners still have everything.
    Abort {
        #[command(flatten)]
        etcd: Etcd,
    },
}

fn main() -> anyhow::Result<()> {
    let cmd = Args::parse().cmd;
    if let Cmd::Token { .. } = cmd {
        return run_token(cmd);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cmd))
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Certs {
            cmd: CertsCmd::Init { dir, force },
        } => {
            let p = certs::init(&dir, force)?;
            println!(
                "cluster CA written to {} (keep {} private)",
                p.display(),
                dir.join("ca.key").display()
            );
        }
        Cmd::Certs {
            cmd: CertsCmd::Issue { node, dir, force },
        } => {
            let p = certs::issue(&dir, &node, force)?;
            println!("certificate for {node} written to {}", p.display());
        }
        Cmd::Cluster {
            cmd:
                ClusterCmd::Init {
                    etcd,
                    vnodes_per_weight,
                    replication_factor,
                    wait_nodes,
                    timeout_secs,
                },
        } => {
            let doc = cluster::init(
                &etcd.config(),
                vnodes_per_weight,
                replication_factor,
                wait_nodes,
                Duration::from_secs(timeout_secs),
            )
            .await?;
            let ids: Vec<String> = doc
                .current
                .members
                .iter()
                .map(|m| format!("{} (weight {})", m.id, m.weight))
                .collect();
            println!(
                "ring epoch {} created with {} cop{} of every key: {}",
                doc.current.epoch,
                doc.current.replication_factor,
                if doc.current.replication_factor == 1 {
                    "y"
                } else {
                    "ies"
                },
                ids.join(", ")
            );
        }
        Cmd::Ring {
            cmd: RingCmd::Show { etcd, user, json },
        } => {
            let (doc, ring, nodes) = cluster::ring(&etcd.config()).await?;
            let shares = cluster::shares(&ring);
            let follows = cluster::follows(&ring);
            let owners: Vec<(String, String)> = user
                .iter()
                .map(|u| (u.clone(), ring.owner(u).to_string()))
                .collect();
            let followers: std::collections::BTreeMap<String, Vec<String>> = user
                .iter()
                .map(|u| {
                    let r = ring.replicas(u);
                    (
                        u.clone(),
                        r.followers.iter().map(|f| f.to_string()).collect(),
                    )
                })
                .collect();
            if json {
                let v = serde_json::json!({
                    "ring": doc,
                    "shares": shares.iter().map(|(id, s)| (id.clone(), *s)).collect::<std::collections::BTreeMap<_, _>>(),
                    "follows": follows,
                    "owners": owners.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    "followers": followers,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "epoch {}  vnodes per weight {}  copies of every key {}",
                    doc.current.epoch,
                    doc.current.vnodes_per_weight,
                    ring.copies()
                );
                println!(
                    "{:<16} {:>6} {:>8} {:>8}  registered",
                    "member", "weight", "owns", "follows"
                );
                for (id, share) in &shares {
                    let w = doc
                        .current
                        .members
                        .iter()
                        .find(|m| &m.id == id)
                        .map_or(0, |m| m.weight);
                    let reg = nodes
                        .iter()
                        .find(|n| &n.id == id)
                        .map_or("no".to_string(), |n| n.client_url.clone());
                    let f = follows.get(id).copied().unwrap_or(0.0);
                    println!(
                        "{id:<16} {w:>6} {:>7.2}% {:>7.2}%  {reg}",
                        share * 100.0,
                        f * 100.0
                    );
                }
                for (u, o) in owners {
                    match followers.get(&u).filter(|f| !f.is_empty()) {
                        Some(f) => println!("{u} -> {o} (followers {})", f.join(", ")),
                        None => println!("{u} -> {o}"),
                    }
                }
            }
        }
        Cmd::Rebalance { cmd } => run_rebalance(cmd).await?,
        Cmd::Nodes { etcd, json } => {
            let nodes = cluster::nodes(&etcd.config()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!(
                    "{:<12} {:<28} {:<22} {:<28} weight",
                    "node", "client", "quic", "admin"
                );
                for n in nodes {
                    println!(
                        "{:<12} {:<28} {:<22} {:<28} {}",
                        n.id, n.client_url, n.quic_addr, n.admin_url, n.weight
                    );
                }
            }
        }
        Cmd::Token { .. } => unreachable!("handled in main"),
    }
    Ok(())
}

async fn run_rebalance(cmd: RebalanceCmd) -> anyhow::Result<()> {
    use chat_cluster::rebalance::Change;
    match cmd {
        RebalanceCmd::Start {
            etcd,
            add,
            weight,
            remove,
        } => {
            let cfg = etcd.config();
            let change = match (add, remove) {
                (Some(node), _) => {
                    let registered = cluster::nodes(&cfg).await?;
                    let w = weight
                        .or_else(|| registered.iter().find(|n| n.id == node).map(|n| n.weight))
                        .unwrap_or(1);
                    Change::Add { node, weight: w }
                }
                (None, Some(node)) => Change::Remove { node },
                (None, None) => bail!("say --add NODE or --remove NODE"),
            };
            let doc = rebalance::start(&cfg, &change).await?;
            let t = doc.transition()?.expect("a move was just started");
            println!(
                "move to epoch {} started: {change}; {} segments, {:.1}% of users move",
                t.to().epoch(),
                t.segments().len(),
                t.moved_share() * 100.0
            );
        }
        RebalanceCmd::Status { etcd, json } => {
            let s = rebalance::status(&etcd.config()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                rebalance::print(&s);
            }
        }
        RebalanceCmd::Wait { etcd, timeout_secs } => {
            if !rebalance::wait(&etcd.config(), Duration::from_secs(timeout_secs)).await? {
                std::process::exit(1);
            }
        }
        RebalanceCmd::Commit { etcd } => match rebalance::commit(&etcd.config()).await? {
            Some(doc) => println!("committed: ring epoch {} is current", doc.current.epoch),
            None => bail!("the move may not commit yet: see `chatctl rebalance status`"),
        },
        RebalanceCmd::Abort { etcd } => {
            let doc = rebalance::abort(&etcd.config()).await?;
            println!(
                "aborted: the ring stays as it was, now epoch {}",
                doc.current.epoch
            );
        }
    }
    Ok(())
}

fn run_token(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Token {
            user,
            device,
            ttl_secs,
            secret,
            secret_file,
        } => {
            let secret = match (secret_file, secret) {
                (Some(f), _) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
                (None, Some(s)) => s,
                (None, None) => bail!(
                    "no secret: pass --secret, --secret-file or set CHAT_NODE_AUTH__JWT_SECRET"
                ),
            };
            // The widest limit a node can be configured with; the node checks its own.
            for (flag, id) in [("--user", &user), ("--device", &device)] {
                if let Some(reason) = chat_proto::ids::id_problem(id, 1024) {
                    bail!("{flag}: {reason}");
                }
            }
            println!(
                "{}",
                chat_auth::issue_token(secret.as_bytes(), &user, &device, ttl_secs)
            );
        }
        _ => unreachable!("only the token command"),
    }
    Ok(())
}
