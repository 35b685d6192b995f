//! What every connection of a node shares: its config, token verifier, storage, hub, writer
//! and routing.

use std::sync::Arc;

use chat_auth::Verifier;
use chat_proto::v1::Limits;

use crate::config::NodeConfig;
use crate::hub::Hub;
use crate::routing::Routing;
use crate::store::Store;
use crate::writer::WriterHandle;

pub struct NodeContext {
    pub cfg: NodeConfig,
    pub client_url: String,
    pub admin_url: String,
    pub verifier: Verifier,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub writer: WriterHandle,
    pub routing: Routing,
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
        }
    }
}
