//! The sub-machine of tenants: their creation and policies (quotas,
//! shares, class caps).

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
