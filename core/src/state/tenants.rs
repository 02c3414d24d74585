//! The sub-machine of tenants: their creation and policies (quotas,
//! shares, class caps).

use std::collections::BTreeMap;

use super::outcome::{Applied, Outcome, Rejection};
use super::types::*;
use super::usage::Usage;
use super::State;

impl State {
    pub(super) fn create_tenant(
        &mut self,
        name: String,
        token_hash: String,
        at: Millis,
    ) -> Applied {
        if self.tenants.contains_key(&name) {
            return Err(Rejection::TenantExists(name));
        }
        let Some(uid_offset) = next_uid_offset(&self.tenants) else {
            return Err(Rejection::inconsistent("every tenant uid offset is taken"));
        };
        self.tokens.insert(token_hash, name.clone());
        self.tenants.insert(
            name.clone(),
            Tenant {
                name: name.clone(),
                created_at: at,
                policy: TenantPolicy::default(),
                usage: Usage::default(),
                uid_offset,
            },
        );
        Ok((Outcome::Tenant(name), vec![]))
    }

    pub(super) fn with_tenant(&mut self, name: &str, f: impl FnOnce(&mut Tenant)) -> Applied {
        let t = self
            .tenants
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownTenant(name.to_string()))?;
        f(t);
        Ok((Outcome::Tenant(name.to_string()), vec![]))
    }
}

/// One more than the highest uid offset assigned (1 for the first
/// tenant): offsets are never reused, so a new tenant never inherits files
/// an earlier one left on a node. `None` when none is left.
fn next_uid_offset(tenants: &BTreeMap<String, Tenant>) -> Option<u32> {
    let highest = tenants.values().map(|t| t.uid_offset).max().unwrap_or(0);
    highest.checked_add(1)
}

/// Gives the tenants of a snapshot that predates uid offsets (offset 0)
/// theirs, in the order they were created (creation time, then name): the
/// order in which replaying their creation would have assigned them, so a
/// replica that loads such a snapshot and one that replays the log agree.
pub(super) fn assign_missing_uid_offsets(tenants: &mut BTreeMap<String, Tenant>) {
    let mut missing: Vec<(Millis, String)> = tenants
        .values()
        .filter(|t| t.uid_offset == 0)
        .map(|t| (t.created_at, t.name.clone()))
        .collect();
    missing.sort_unstable();
    for (_, name) in missing {
        let next = next_uid_offset(tenants).unwrap_or(u32::MAX);
        if let Some(t) = tenants.get_mut(&name) {
            t.uid_offset = next;
        }
    }
}
