//! Server-side history per user: its settings, and the trimming of inbox entries its history
//! setting no longer keeps.
//!
//! An entry is trimmed once every device of the user has it (the least advanced cursor is past
//! it), the user has read it (the read receipt is made from it), and it is older than the
//! user's `history_days` (0: at once, device-only history). Entries not yet received or read by
//! all stay for the cluster's retention, whatever the setting. Trimming walks forward from the
//! last trimmed seq and deletes exactly the entries it passes (a device-only user's are not even
//! read): never a scan of the inbox. It runs when a cursor or the read mark moves and when the
//! setting changes; entries that age past the setting in between are hidden from history reads
//! (`Store::history_floor`) until then.

use chat_proto::store::UserSettings;
use prost::Message as _;

use super::batch::Batch;
use super::command::SettingsChange;
use super::Writer;
use crate::error::ChatError;
use crate::store::keys::*;
use crate::store::Cf;

/// Most entries one trim deletes (the rest go with the next ack).
const TRIM_MAX: u64 = 4_096;

impl Writer {
    /// `user`'s settings as this batch leaves them.
    fn settings_of(&self, user: &str, b: &Batch) -> Result<UserSettings, ChatError> {
        match b.settings.get(user) {
            Some(s) => Ok(*s),
            None => Ok(self.store.settings(user)?),
        }
    }

    pub(super) fn change_settings(
        &mut self,
        user: &str,
        change: SettingsChange,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let mut s = self.settings_of(user, b)?;
        if let Some(h) = change.hide_last_seen {
            s.hide_last_seen = h;
        }
        let history = change.history_days.is_some_and(|d| d != s.history_days);
        if let Some(d) = change.history_days {
            s.history_days = d;
        }
        b.writes
            .put(Cf::Meta, settings_key(user), s.encode_to_vec());
        self.cache.user(&self.store, user)?.history_days = Some(s.history_days);
        b.settings.insert(user.to_string(), s);
        if history {
            self.trim_history(user, b)?;
        }
        Ok(())
    }

    /// `user`'s history setting, read from storage once per cached user.
    fn history_days_of(&mut self, user: &str, b: &Batch) -> Result<Option<u32>, ChatError> {
        if let Some(s) = b.settings.get(user) {
            return Ok(s.history_days);
        }
        if let Some(d) = self.cache.user(&self.store, user)?.history_days {
            return Ok(d);
        }
        let d = self.store.settings(user)?.history_days;
        self.cache.user(&self.store, user)?.history_days = Some(d);
        Ok(d)
    }

    /// The least advanced cursor of `user`'s devices (as this batch leaves them); `None`
    /// without a device.
    fn min_cursor(&self, user: &str, b: &Batch) -> Result<Option<u64>, ChatError> {
        let mut min: Option<u64> = None;
        for (name, stored) in self.store.devices(user)? {
            let d = match b.devices.get(&device_key(user, &name)) {
                Some(Some(d)) => *d,
                Some(None) => continue,
                None => stored,
            };
            min = Some(min.map_or(d.cursor, |m| m.min(d.cursor)));
        }
        Ok(min)
    }

    /// Deletes the entries of `user`'s inbox its history setting no longer keeps.
    pub(super) fn trim_history(&mut self, user: &str, b: &mut Batch) -> Result<(), ChatError> {
        let Some(days) = self.history_days_of(user, b)? else {
            return Ok(());
        };
        let Some(min_cursor) = self.min_cursor(user, b)? else {
            return Ok(());
        };
        let u = self.cache.user(&self.store, user)?;
        let from = u.state.trimmed_upto + 1;
        // Only committed entries can have been received and read.
        let upto = min_cursor
            .min(u.state.read_upto)
            .min(u.committed_next.saturating_sub(1));
        if upto < from {
            return Ok(());
        }
        let last = upto.min(from + TRIM_MAX - 1);
        let end = if days == 0 {
            last
        } else {
            // Walk forward while entries are older than the window: only what is deleted (and
            // the first entry kept) is read.
            let floor = crate::store::history_floor(b.now_ms, days);
            let mut end = from - 1;
            for e in self
                .store
                .inbox_from(user, from, (last - from + 1) as usize)?
            {
                if e.seq > last || e.ts_ms >= floor {
                    break;
                }
                end = e.seq;
            }
            end
        };
        if end < from {
            return Ok(());
        }
        for seq in from..=end {
            b.writes.delete(Cf::Inbox, inbox_key(user, seq));
        }
        let u = self.cache.user(&self.store, user)?;
        u.state.trimmed_upto = end;
        b.mark_dirty(user);
        Ok(())
    }
}
