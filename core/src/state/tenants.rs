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
        self.tokens.insert(token_hash, name.clone());
        self.tenants.insert(
            name.clone(),
            Tenant {
                name: name.clone(),
                created_at: at,
                policy: TenantPolicy::default(),
                usage: Usage::default(),
                // Given by the `AssignUidOffsets` that follows.
                uid_offset: 0,
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

impl State {
    /// Gives every tenant without a uid offset (0) the next ones, in the
    /// order they were created (creation time, then name).
    pub(super) fn assign_uid_offsets(&mut self) -> Applied {
        let mut missing: Vec<(Millis, String)> = self
            .tenants
            .values()
            .filter(|t| t.uid_offset == 0)
            .map(|t| (t.created_at, t.name.clone()))
            .collect();
        missing.sort_unstable();
        let highest = self
            .tenants
            .values()
            .map(|t| t.uid_offset)
            .max()
            .unwrap_or(0);
        let fits = u32::try_from(missing.len())
            .ok()
            .and_then(|n| highest.checked_add(n));
        if fits.is_none() {
            return Err(Rejection::inconsistent("every tenant uid offset is taken"));
        }
        for (_, name) in missing {
            let next = next_uid_offset(&self.tenants).unwrap_or(u32::MAX);
            if let Some(t) = self.tenants.get_mut(&name) {
                t.uid_offset = next;
            }
        }
        Ok((Outcome::None, vec![]))
    }

    /// Whether some tenant has no uid offset yet (see `AssignUidOffsets`).
    pub fn uid_offsets_missing(&self) -> bool {
        self.tenants.values().any(|t| t.uid_offset == 0)
    }
}
