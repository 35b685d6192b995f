//! The workload's groups: made before the devices start, through the router as a real app
//! would, and never changed during the run (the checker needs each message's members).

use std::collections::BTreeMap;
use std::time::Duration;

use chat_client::v1::{group_reply, group_request, server_frame, GroupCreate};
use chat_client::{Client, ConnectOptions};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{user_id, WorkloadConfig};
use crate::ChaosError;

/// How long making one group may take (the cluster has just started).
const MAKE_WITHIN: Duration = Duration::from_secs(60);

/// Makes `cfg.groups` groups of `cfg.group_size` users each (members drawn from the seed; the
/// first is the admin, connected as its first device): group id → members.
pub async fn make(cfg: &WorkloadConfig) -> crate::Result<BTreeMap<String, Vec<String>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6a0u64);
    let size = cfg.group_size.min(cfg.users);
    let mut groups = BTreeMap::new();
    for g in 0..cfg.groups {
        if size < 2 {
            break;
        }
        let members: Vec<String> = sample(&mut rng, cfg.users, size)
            .into_iter()
            .map(user_id)
            .collect();
        let deadline = tokio::time::Instant::now() + MAKE_WITHIN;
        let id = loop {
            match make_one(cfg, g, &members).await {
                Ok(id) => break id,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("chaos: making group {g}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(ChaosError::Setup(format!("making group {g}: {e}"))),
            }
        };
        groups.insert(id, members);
    }
    Ok(groups)
}

async fn make_one(cfg: &WorkloadConfig, g: usize, members: &[String]) -> Result<String, String> {
    let token = chat_auth::issue_token(
        chat_tests::SECRET.as_bytes(),
        &members[0],
        "d0",
        cfg.token_ttl_secs,
    );
    let opts = ConnectOptions {
        timeout: Duration::from_secs(5),
        agent: "chat-chaos setup".into(),
        ..ConnectOptions::default()
    };
    let mut c = Client::connect_with(&cfg.router_url, &token, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let request_id = format!("group-{g}");
    c.group_request(
        &request_id,
        group_request::Op::Create(GroupCreate {
            name: format!("chaos {g}"),
            members: members[1..].to_vec(),
            group: String::new(),
        }),
    )
    .await
    .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let f = c.recv_until(deadline).await.map_err(|e| e.to_string())?;
        match f.frame {
            Some(server_frame::Frame::Group(r)) if r.request_id == request_id => {
                return match r.reply {
                    Some(group_reply::Reply::Info(i)) => Ok(i.group),
                    other => Err(format!("unexpected answer {other:?}")),
                };
            }
            Some(server_frame::Frame::Error(e)) if e.r#ref == request_id => {
                return Err(format!("refused: {}", e.message));
            }
            _ => {}
        }
    }
}
