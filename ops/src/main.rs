//! `chatctl`: administration of a chat cluster.
//!
//! Today: `chatctl token` issues development tokens. Cluster commands (ring, nodes, certificates,
//! rebalancing) arrive with cluster mode.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chatctl", version, about = "Chat cluster administration")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
        /// Read the secret from this file (takes precedence over --secret and the environment).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
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
            use chat_node::validate::{check_id, IdKind};
            check_id(IdKind::User, &user, 1024).context("--user")?;
            check_id(IdKind::Device, &device, 1024).context("--device")?;
            println!(
                "{}",
                chat_node::auth::issue_token(secret.as_bytes(), &user, &device, ttl_secs)
            );
        }
    }
    Ok(())
}
