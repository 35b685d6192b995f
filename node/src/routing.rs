//! Who owns what: this node's id and its view of the ring (kept up to date from etcd by
//! `chat_cluster`).

use chat_cluster::ClusterView;
use chat_ring::Ring;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Routing {
    pub self_id: String,
    pub view: watch::Receiver<ClusterView>,
}

impl Routing {
    /// A ring of one: this node owns everyone (standalone, and unit tests).
    pub fn standalone(self_id: &str) -> Routing {
        let (_tx, view) = watch::channel(ClusterView::fixed(Ring::single(self_id), []));
        Routing {
            self_id: self_id.to_string(),
            view,
        }
    }
}
