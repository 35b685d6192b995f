//! Receiver after a commit: commands that touch a user of a segment still to be sealed wait
//! here, in arrival order, and so do later commands for the same users (per-user order). They
//! run once every seal is in.

use std::collections::{HashSet, VecDeque};

use crate::writer::command::Command;

#[derive(Default)]
pub(crate) struct Held {
    commands: VecDeque<Command>,
    /// Users touched by the commands waiting here.
    users: HashSet<String>,
}

impl Held {
    /// Whether a command for `user` must wait behind one that already does.
    pub(crate) fn has(&self, user: &str) -> bool {
        self.users.contains(user)
    }

    pub(crate) fn push(&mut self, cmd: Command) {
        for u in cmd.users() {
            self.users.insert(u.to_string());
        }
        self.commands.push_back(cmd);
        metrics::gauge!(crate::admin::REBALANCE_HELD).set(self.commands.len() as f64);
        tracing::debug!(waiting = self.commands.len(), "command waits for a seal");
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Every waiting command, oldest first.
    pub(crate) fn take(&mut self) -> VecDeque<Command> {
        self.users.clear();
        metrics::gauge!(crate::admin::REBALANCE_HELD).set(0.0);
        std::mem::take(&mut self.commands)
    }
}
