//! `chat group ...`: make and manage groups, list yours, and see a message's receipts.

use std::time::Duration;

use anyhow::bail;
use chat_client::v1::{
    group_reply, group_request::Op, server_frame, GroupCreate, GroupMembers, GroupReceiptsQuery,
    GroupRef, GroupRename,
};
use chat_client::Client;
use clap::Subcommand;

use crate::print::print_frame;

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Make a group with you as its admin; prints its id.
    Create {
        name: String,
        /// The other members.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Rename a group (admins only).
    Rename { group: String, name: String },
    /// Add members (admins only).
    Add { group: String, users: Vec<String> },
    /// Remove members (admins only).
    Remove { group: String, users: Vec<String> },
    /// Leave a group.
    Leave { group: String },
    /// Make members admins (admins only).
    Promote { group: String, users: Vec<String> },
    /// Make admins plain members (admins only).
    Demote { group: String, users: Vec<String> },
    /// A group's name and members.
    Info { group: String },
    /// The groups you are a member of.
    List,
    /// How many members received and read one of the group's messages.
    Receipts {
        group: String,
        msg_id: String,
        /// Also list who.
        #[arg(long)]
        who: bool,
    },
}

pub async fn run(c: &mut Client, cmd: GroupCmd, json: bool) -> anyhow::Result<()> {
    let members = |group, users| GroupMembers { group, users };
    let op = match cmd {
        GroupCmd::Create { name, members } => Op::Create(GroupCreate {
            name,
            members,
            group: String::new(),
        }),
        GroupCmd::Rename { group, name } => Op::Rename(GroupRename { group, name }),
        GroupCmd::Add { group, users } => Op::Add(members(group, users)),
        GroupCmd::Remove { group, users } => Op::Remove(members(group, users)),
        GroupCmd::Promote { group, users } => Op::Promote(members(group, users)),
        GroupCmd::Demote { group, users } => Op::Demote(members(group, users)),
        GroupCmd::Leave { group } => Op::Leave(GroupRef { group }),
        GroupCmd::Info { group } => Op::Info(GroupRef { group }),
        GroupCmd::List => Op::Mine(true),
        GroupCmd::Receipts { group, msg_id, who } => {
            Op::Receipts(GroupReceiptsQuery { group, msg_id, who })
        }
    };
    c.group_request("cli", op).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = c.recv_until(deadline).await?;
        match &f.frame {
            Some(server_frame::Frame::Group(r)) if r.request_id == "cli" => {
                if json {
                    print_frame(true, &f, "");
                    return Ok(());
                }
                match &r.reply {
                    Some(group_reply::Reply::Info(i)) => {
                        println!("{} \"{}\" (made by {})", i.group, i.name, i.created_by);
                        for m in &i.members {
                            let role = if m.admin { " (admin)" } else { "" };
                            println!("  {}{role}", m.user);
                        }
                    }
                    Some(group_reply::Reply::Groups(l)) if l.groups.is_empty() => {
                        println!("(no groups)")
                    }
                    Some(group_reply::Reply::Groups(l)) => {
                        for g in &l.groups {
                            println!("{} \"{}\"", g.group, g.name);
                        }
                    }
                    Some(group_reply::Reply::Receipts(r)) => {
                        println!("delivered to {}, read by {}", r.delivered, r.read);
                        if !r.delivered_by.is_empty() {
                            println!("  delivered: {}", r.delivered_by.join(", "));
                        }
                        if !r.read_by.is_empty() {
                            println!("  read: {}", r.read_by.join(", "));
                        }
                    }
                    None => println!("done"),
                }
                return Ok(());
            }
            Some(server_frame::Frame::Error(e)) if e.r#ref == "cli" => {
                bail!("refused: {}", e.message)
            }
            _ => {}
        }
    }
}
