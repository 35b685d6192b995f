//! `chat`: a command-line chat client.
//!
//!   chat send --to bob "hello"          send, print ✓ (and optionally wait for ✓✓ or read)
//!   chat send --to bob --file photo.jpg ["caption"]   send a file (uploaded to the blob store)
//!   chat fetch --seq N [--out PATH]     download the file of the message at seq N
//!   chat listen [--read] [--count N]    print incoming messages and receipts, acknowledge them
//!   chat history [--limit N]            page back through your inbox
//!   chat typing --to bob [--stopped]    tell bob you are typing (or stopped)
//!   chat block|unblock USER, chat blocked   manage and list the users you blocked
//!   chat presence USER...               who is online, and when they were last seen
//!   chat watch USER... [--timeout-secs N]   print their status, then each change
//!   chat hide-last-seen true|false      show others only whether you are online
//!   chat send --group G "hi", chat typing --group G   the same in a group
//!   chat group create|rename|add|remove|leave|promote|demote|info|list|receipts
//!                                       make and manage groups (see `chat group --help`)

mod group;
mod media;
mod print;

use std::time::Duration;

use anyhow::{bail, Context};
use chat_client::v1::{deliver, server_frame, Deliver, ReceiptKind};
use chat_client::{Client, ConnectOptions};
use clap::{Parser, Subcommand, ValueEnum};
use print::{print_deliver, print_frame, print_status};

#[derive(Parser)]
#[command(name = "chat", version, about = "Command-line chat client")]
struct Args {
    /// Router or node WebSocket URL: the router (or a node that is not the user's home) sends
    /// the client on to its home node.
    #[arg(long, env = "CHAT_URL", default_value = "ws://127.0.0.1:7000")]
    url: String,
    /// Access token (`chatctl token --user U --device D` makes one for development).
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: String,
    /// Print frames as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// For `wss://` nodes whose certificate comes from a private CA: trust the CA certificates
    /// in this PEM file instead of the system's roots.
    #[arg(long, env = "CHAT_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send a message to a user (--to) or a group (--group).
    Send {
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Message text (a caption with --file, optional there).
        #[arg(required_unless_present = "file")]
        body: Option<String>,
        /// Attach this file: uploaded to the cluster's blob store, named in the message.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// The file's media type; guessed from its name when omitted.
        #[arg(long, requires = "file")]
        mime: Option<String>,
        /// Idempotency key; a fresh UUID when omitted. Reuse it to retry safely.
        #[arg(long)]
        client_msg_id: Option<String>,
        /// Wait until the message reaches this state.
        #[arg(long, value_enum, default_value = "sent")]
        wait: WaitFor,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Print incoming messages and receipts as they arrive (backlog first), acknowledging each.
    Listen {
        /// Also mark messages as read.
        #[arg(long)]
        read: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// Download the file of the message at a seq of your inbox (checked against its SHA-256).
    Fetch {
        #[arg(long)]
        seq: u64,
        /// Where to write it; default: the file's name, in the current directory.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Print a page of your inbox, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Entries before this seq (0: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
    },
    /// Block a user: its messages are no longer delivered to you, nor its typing shown.
    Block { user: String },
    /// Unblock a user.
    Unblock { user: String },
    /// List the users you blocked.
    Blocked,
    /// Print users' status: online, or when they were last seen.
    Presence { users: Vec<String> },
    /// Print users' status, then each change as it happens.
    Watch {
        users: Vec<String>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// Hide (true) or show (false) your last seen to others.
    HideLastSeen {
        #[arg(action = clap::ArgAction::Set)]
        hide: bool,
    },
    /// Tell a user (or a group's online members) you are typing (shown for a few seconds;
    /// repeat while typing), or stopped.
    Typing {
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        stopped: bool,
    },
    /// Make and manage groups.
    #[command(subcommand)]
    Group(group::GroupCmd),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WaitFor {
    Sent,
    Delivered,
    Read,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = ConnectOptions::default();
    if let Some(ca) = &args.ca_file {
        opts.tls = Some(chat_client::tls_trusting(ca).context("--ca-file")?);
    }
    let mut c = Client::connect_with(&args.url, &args.token, &opts)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    eprintln!(
        "connected to {} as {}/{} (inbox at seq {})",
        c.welcome.node, c.welcome.user, c.welcome.device, c.welcome.inbox_seq
    );
    match args.cmd {
        Cmd::Send {
            to,
            group,
            body,
            file,
            mime,
            client_msg_id,
            wait,
            timeout_secs,
        } => {
            let cmid = client_msg_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let attachment = match file {
                Some(path) => Some(media::upload(&mut c, &path, mime).await?),
                None => None,
            };
            if to.is_none() && group.is_none() {
                bail!("say --to or --group");
            }
            c.send(chat_client::v1::client_frame::Frame::Send(
                chat_client::v1::Send {
                    client_msg_id: cmid.clone(),
                    to: to.unwrap_or_default(),
                    group: group.unwrap_or_default(),
                    body: body.unwrap_or_default(),
                    attachment,
                    ..Default::default()
                },
            ))
            .await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
            let mut msg_id = None;
            loop {
                let f = c
                    .recv_until(deadline)
                    .await
                    .context("waiting for the node")?;
                match &f.frame {
                    Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid => {
                        print_frame(args.json, &f, "✓ sent");
                        msg_id = Some(s.msg_id.clone());
                        if wait == WaitFor::Sent {
                            return Ok(());
                        }
                    }
                    Some(server_frame::Frame::Error(e)) if e.r#ref == cmid => {
                        print_frame(args.json, &f, "");
                        bail!("send refused: {}", e.message);
                    }
                    Some(server_frame::Frame::Deliver(Deliver {
                        entry: Some(deliver::Entry::Receipt(r)),
                        ..
                    })) if msg_id.as_ref().is_some_and(|id| r.msg_ids.contains(id)) => {
                        let kind = ReceiptKind::try_from(r.kind).unwrap_or_default();
                        print_frame(args.json, &f, "");
                        if kind == ReceiptKind::Read
                            || (kind == ReceiptKind::Delivered && wait == WaitFor::Delivered)
                        {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
        Cmd::Listen {
            read,
            count,
            timeout_secs,
        } => {
            let deadline =
                timeout_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let mut messages = 0u64;
            loop {
                if count.is_some_and(|n| messages >= n) {
                    return Ok(());
                }
                let f = match deadline {
                    Some(d) => match c.recv_until(d).await {
                        Err(chat_client::ClientError::Timeout) => return Ok(()),
                        r => r?,
                    },
                    None => c.recv().await?,
                };
                print_frame(args.json, &f, "");
                if let Some(server_frame::Frame::Deliver(d)) = &f.frame {
                    if matches!(d.entry, Some(deliver::Entry::Message(_))) {
                        messages += 1;
                    }
                    if read {
                        c.read(d.seq).await?;
                    } else {
                        c.ack(d.seq).await?;
                    }
                }
            }
        }
        Cmd::Group(cmd) => group::run(&mut c, cmd, args.json).await?,
        Cmd::Typing { to, group, stopped } => {
            use chat_client::v1::TypingState;
            let state = if stopped {
                TypingState::Stopped
            } else {
                TypingState::Typing
            };
            match (to, group) {
                (_, Some(g)) => c.typing_group(&g, state).await?,
                (Some(to), None) => c.typing(&to, state).await?,
                (None, None) => bail!("say --to or --group"),
            }
            // A refusal comes back at once; a ping's pong says none came.
            c.ping(1).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let f = c.recv_until(deadline).await?;
                match &f.frame {
                    Some(server_frame::Frame::Error(e)) => bail!("refused: {}", e.message),
                    Some(server_frame::Frame::Pong(_)) => break,
                    _ => {}
                }
            }
        }
        Cmd::Block { .. } | Cmd::Unblock { .. } | Cmd::Blocked => {
            use chat_client::v1::{block_request::Op, client_frame, BlockRequest};
            let op = match args.cmd {
                Cmd::Block { user } => Op::Block(user),
                Cmd::Unblock { user } => Op::Unblock(user),
                _ => Op::List(true),
            };
            c.send(client_frame::Frame::Block(BlockRequest {
                request_id: "cli".into(),
                op: Some(op),
            }))
            .await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let f = c.recv_until(deadline).await?;
                match &f.frame {
                    Some(server_frame::Frame::Blocked(b)) => {
                        if args.json {
                            print_frame(true, &f, "");
                        } else if b.users.is_empty() {
                            println!("(nobody blocked)");
                        } else {
                            println!("blocked: {}", b.users.join(", "));
                        }
                        break;
                    }
                    Some(server_frame::Frame::Error(e)) => bail!("refused: {}", e.message),
                    _ => {}
                }
            }
        }
        Cmd::Presence { .. } | Cmd::Watch { .. } | Cmd::HideLastSeen { .. } => {
            use chat_client::v1::{presence_request::Op, PresenceSettings, PresenceUsers};
            let (op, watch_for) = match args.cmd {
                Cmd::Presence { users } => (Op::Query(PresenceUsers { users }), None),
                Cmd::Watch {
                    users,
                    timeout_secs,
                } => (Op::Watch(PresenceUsers { users }), Some(timeout_secs)),
                Cmd::HideLastSeen { hide } => (
                    Op::Settings(PresenceSettings {
                        hide_last_seen: hide,
                    }),
                    None,
                ),
                _ => unreachable!(),
            };
            c.presence("cli", op).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let f = c.recv_until(deadline).await?;
                match &f.frame {
                    Some(server_frame::Frame::Presence(p)) => {
                        for s in &p.statuses {
                            print_status(args.json, s);
                        }
                        break;
                    }
                    Some(server_frame::Frame::Error(e)) => bail!("refused: {}", e.message),
                    _ => {}
                }
            }
            if let Some(timeout) = watch_for {
                let until = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
                loop {
                    let f = match until {
                        Some(d) => match c.recv_until(d).await {
                            Err(chat_client::ClientError::Timeout) => break,
                            r => r?,
                        },
                        None => c.recv().await?,
                    };
                    if let Some(server_frame::Frame::PresenceUpdate(u)) = &f.frame {
                        if let Some(s) = &u.status {
                            print_status(args.json, s);
                        }
                    }
                }
            }
        }
        Cmd::Fetch { seq, out } => media::fetch(&mut c, seq, out).await?,
        Cmd::History { limit, before } => {
            let mut other = Vec::new();
            let page = c
                .history(before, limit, Duration::from_secs(30), &mut other)
                .await?;
            for d in &page.entries {
                print_deliver(args.json, d);
            }
            if page.more {
                let oldest = page.entries.last().map(|d| d.seq).unwrap_or(0);
                eprintln!("(more: chat history --before {oldest})");
            }
        }
    }
    c.close().await.ok();
    Ok(())
}
