//! What every connection of a node shares: its config, token verifier, storage, hub, writer,
//! routing, ephemeral events, presence, group calls and rate limits.

use std::sync::Arc;

use chat_auth::Verifier;
use chat_proto::v1::Limits;

use crate::config::NodeConfig;
use crate::ephemeral::Ephemeral;
use crate::groups::Groups;
use crate::hub::Hub;
use crate::media::Media;
use crate::overload::Load;
use crate::presence::Presence;
use crate::rate::Limiter;
use crate::routing::Routing;
use crate::store::Store;
use crate::writer::WriterHandle;

pub struct NodeContext {
    pub cfg: NodeConfig,
    pub client_url: String,
    pub admin_url: String,
    /// Base URL of the client HTTP listener.
    pub http_url: String,
    pub verifier: Verifier,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub writer: WriterHandle,
    pub routing: Routing,
    pub ephemeral: Arc<Ephemeral>,
    pub presence: Arc<Presence>,
    pub groups: Arc<Groups>,
    /// Attachments: upload slots, checks, download URLs.
    pub media: Arc<Media>,
    /// The node's load: what it sheds now (`crate::overload`).
    pub load: Load,
    /// Rate limits per user (`[rate]`).
    pub user_limits: Limiter<String>,
    /// Rate limits per source address (new connections).
    pub addr_limits: Limiter<std::net::IpAddr>,
}

impl NodeContext {
    /// The limits a client is told in its Welcome.
    pub fn limits(&self) -> Limits {
        let l = &self.cfg.limits;
        Limits {
            max_frame_bytes: l.max_frame_bytes,
            max_body_bytes: l.max_body_bytes,
            max_id_bytes: l.max_id_bytes,
            max_history_page: l.max_history_page,
            max_devices_per_user: l.max_devices_per_user,
            max_inflight_sends: l.max_inflight_sends,
            max_media_bytes: self.cfg.media.max_bytes,
            max_thumbnail_bytes: self.cfg.media.max_thumbnail_bytes,
        }
    }
}
