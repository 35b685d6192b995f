//! Sessions of users a ring change moves away are told so; no other session wakes. One task
//! per node looks at each change of the cluster view (the view only changes when the ring, a
//! move or the registered nodes do) and asks the hub to signal the connected users whose home is
//! now elsewhere; their sessions redirect them (`session::on_signal`).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::hub::Hub;
use crate::routing::{Route, Routing};

pub async fn signal_moved(hub: Arc<Hub>, routing: Routing, mut shutdown: broadcast::Receiver<()>) {
    let mut view = routing.view.clone();
    loop {
        // A pass at start too: sessions may connect before this task first runs, and a change
        // that came before that would otherwise count as seen.
        let epoch = view.borrow_and_update().epoch();
        let moved = hub.signal_moved(|u| matches!(routing.route(u), Route::Elsewhere { .. }));
        if moved > 0 {
            tracing::info!(
                epoch,
                users = moved,
                "connected users moved to another node"
            );
        }
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = shutdown.recv() => return,
        }
    }
}
