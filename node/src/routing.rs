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

/// Where a user is served.
#[derive(Debug, PartialEq)]
pub enum Route {
    Here,
    /// `url`: the home node's WebSocket URL; `http_url`: its client HTTP listener.
    Elsewhere {
        url: String,
        http_url: String,
        epoch: u64,
    },
    Unavailable(String),
}

impl Routing {
    /// Where `user` is served now: here, at another node's client URL, or nowhere yet.
    pub fn route(&self, user: &str) -> Route {
        let v = self.view.borrow();
        match v.owner(user) {
            None => Route::Unavailable("the cluster has no ring yet".into()),
            Some(o) if o == self.self_id => Route::Here,
            Some(o) => match v.node(o) {
                Some(n) => Route::Elsewhere {
                    url: n.client_url.clone(),
                    http_url: n.http_url.clone(),
                    epoch: v.epoch(),
                },
                None => Route::Unavailable(format!("home node {o} is not available")),
            },
        }
    }
}
