//! The replicated state machine: pure and synchronous.
//!
//! `State::apply(cmd, at)` is the only way the pool changes. It performs no
//! I/O and reads no clock: `at` is the time stamped on the log entry, so
//! every replica that applies the same log ends in the same state.
//!
//! Imports go one way. At the top: `indexed` (the state with the
//! planner's indexes beside it, kept exact from what each command
//! reaches), then this module (the state's fields and its reads),
//! `command` (the log's entries) and `apply` (the dispatch, the upkeep of
//! the state's own derived sets, and the commands that wrap others:
//! `Audited`, `SubmitOnce`). Below it the sub-machines, each owning one
//! part of the state and its commands: `nodes` -> `jobs` -> `ledger`,
//! `security`, `tenants` (a sub-machine draws only on those to its
//! right). Below them the vocabulary, which imports no sub-machine:
//! `types` (with `host`: CPU and memory amounts), `outcome` (outcomes,
//! effects, rejections), the derived indexes (`free` and `holdings`, kept
//! by `indexed`; `queues`, kept in the state) and the snapshot form
//! (`packed`).
//!
//! `apply` is total: whatever command reaches the log, it returns (never
//! panics), and a command it cannot apply is rejected whole, the state
//! left as it was. A broken invariant found on the way is
//! `Rejection::Inconsistent`; every replica refuses the entry alike, and
//! the edge logs and counts it. Sums of amounts that come from the log
//! saturate. The lints below keep panicking shortcuts out.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod apply;
mod command;
mod free;
mod holdings;
mod host;
mod indexed;
mod jobs;
mod ledger;
mod mix;
mod nodes;
mod outcome;
mod packed;
mod queues;
mod request_ids;
mod security;
mod tenants;
mod types;
pub mod usage;

#[cfg(test)]
mod apply_proptests;
#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod indexed_tests;
#[cfg(test)]
mod ledger_tests;
#[cfg(test)]
mod mix_tests;
#[cfg(test)]
mod request_ids_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
/// Builders for tests, here and in the crates above (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod tests_support;
#[cfg(test)]
mod uid_offset_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use apply::Reach;
pub use command::Command;
pub use free::{BucketKey, Contributed, Free, FreeCapacity, Layout};
pub use holdings::{Holdings, TenantHoldings};
pub use indexed::Indexed;
pub use jobs::{
    fits_gpu, fits_node, show_cpu, show_memory, TaskPlacement, ARRAY_INDEX_ENV, ARRAY_JOB_ID_ENV,
    ARRAY_SIZE_ENV, MAX_ARRAY,
};
pub use ledger::billing;
pub use ledger::{
    Accounts, Budget, GpuPrice, LedgerEntry, Money, PriceBook, PriceChange, PriceVersion, RunEnd,
};
pub use mix::{JobKind, Mix, MIX_KINDS, MIX_WINDOW};
pub use outcome::{Applied, Effect, Outcome, Rejection};
pub use queues::{Queues, TenantQueue};
pub use request_ids::{
    check_request_id, RequestIds, SeenRequest, MAX_REQUEST_ID_LEN, REQUEST_IDS_PER_TENANT,
    REQUEST_ID_WINDOW,
};
pub use security::{
    Actor, ApiToken, AuditDropped, AuditGap, AuditRecord, AuditResult, RefusedCalls, Role,
    Suspension, TokenGrant, AUDIT_FIELD_BYTES, AUDIT_KEEP_MS, AUDIT_MAX_RECORDS,
    AUDIT_REFUSED_KEYS,
};
pub use types::*;
pub use usage::Usage;

/// The replicated state. Its equality and copies are the derived, plain
/// ones: the planner's indexes are not in it but beside it (`Indexed`),
/// so two states with equal data are equal whatever indexes anyone keeps
/// for them. The sets marked derived below are functions of the data, so
/// they agree whenever the data does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredState")]
pub struct State {
    tenants: BTreeMap<String, Tenant>,
    /// SHA-256 of a tenant's initial token (hex) -> tenant name; other
    /// tokens are in `security`.
    tokens: BTreeMap<String, String>,
    /// Nodes and jobs are positional records in binary snapshots (`packed`).
    #[serde(with = "packed")]
    nodes: free::Nodes,
    #[serde(with = "packed")]
    jobs: BTreeMap<JobId, Arc<Job>>,
    /// Jobs waiting for GPUs, in submission order.
    pending: BTreeSet<JobId>,
    /// Jobs holding GPUs (`JobState::is_placed`), so that the planner's
    /// per-round books need not walk every job the pool ever ran, nor the
    /// pending ones (derived, like `live`).
    #[serde(skip_serializing)]
    placed: BTreeSet<JobId>,
    last_job: u64,
    policy: PoolPolicy,
    /// The usage ledger, price book and budgets (absent in snapshots
    /// taken before they existed).
    #[serde(default)]
    accounts: Accounts,
    /// Tokens with roles, suspensions and the audit trail.
    #[serde(default)]
    security: security::Security,
    /// Every job not yet final (pending, placed, stopping): an index kept
    /// exact by `apply`, so what looks at live work (the planner's books,
    /// the jobs on a node) reads these instead of the whole history. It
    /// is derived from `jobs`, so snapshots leave it out and loading one
    /// rebuilds it.
    #[serde(skip_serializing)]
    live: BTreeSet<JobId>,
    /// Every final job still kept in full, by id (derived, like `live`).
    #[serde(skip_serializing)]
    done: BTreeSet<JobId>,
    /// The pending jobs of each tenant in the planner's orders (derived,
    /// like `live`).
    #[serde(skip_serializing)]
    queues: Queues,
    /// Per tenant: the archived final jobs, summed.
    archived: BTreeMap<String, Archived>,
    /// Submissions' request ids, so a retried submit creates nothing new
    /// (absent in snapshots taken before they existed, and left out while
    /// empty, so a pool that never used them serializes as before).
    #[serde(default, skip_serializing_if = "RequestIds::is_empty")]
    request_ids: RequestIds,
    /// The recent job mix the planner expects (absent in snapshots taken
    /// before it existed, and left out until it starts counting).
    #[serde(default, skip_serializing_if = "Mix::is_unused")]
    mix: Mix,
}

/// The serialized form of [`State`]: everything but the derived indexes.
#[derive(Deserialize)]
struct StoredState {
    tenants: BTreeMap<String, Tenant>,
    tokens: BTreeMap<String, String>,
    #[serde(with = "packed")]
    nodes: free::Nodes,
    #[serde(with = "packed")]
    jobs: BTreeMap<JobId, Arc<Job>>,
    pending: BTreeSet<JobId>,
    last_job: u64,
    policy: PoolPolicy,
    #[serde(default)]
    archived: BTreeMap<String, Archived>,
    #[serde(default)]
    accounts: Accounts,
    #[serde(default)]
    security: security::Security,
    #[serde(default)]
    request_ids: RequestIds,
    #[serde(default)]
    mix: Mix,
}

impl From<StoredState> for State {
    fn from(s: StoredState) -> State {
        let (done, live): (BTreeSet<JobId>, BTreeSet<JobId>) = s
            .jobs
            .keys()
            .partition(|id| s.jobs.get(*id).is_some_and(|j| j.state.is_final()));
        let placed = s
            .jobs
            .values()
            .filter(|j| j.state.is_placed())
            .map(|j| j.id)
            .collect();
        let queues = Queues::of(
            s.pending
                .iter()
                .filter_map(|id| s.jobs.get(id))
                .map(|j| &**j),
        );
        let mut nodes = s.nodes;
        jobs::rebuild_host_held(&mut nodes, s.jobs.values().map(|j| &**j));
        let mut accounts = s.accounts;
        accounts.loaded();
        State {
            tenants: s.tenants,
            tokens: s.tokens,
            nodes,
            jobs: s.jobs,
            pending: s.pending,
            placed,
            last_job: s.last_job,
            policy: s.policy,
            accounts,
            security: s.security,
            live,
            done,
            queues,
            archived: s.archived,
            request_ids: s.request_ids,
            mix: s.mix,
        }
    }
}

impl State {
    /// Whether every node's `host_held` is what its placed jobs hold.
    #[cfg(test)]
    pub fn host_held_is_exact(&self) -> bool {
        let mut fresh = self.nodes.clone();
        jobs::rebuild_host_held(&mut fresh, self.placed_jobs());
        fresh == self.nodes
    }

    /// A tenant's archived final jobs, summed.
    pub fn archived(&self, tenant: &str) -> Archived {
        self.archived.get(tenant).copied().unwrap_or_default()
    }

    /// The recent job mix, as the planner expects it.
    pub fn mix(&self) -> &Mix {
        &self.mix
    }

    pub fn policy(&self) -> &PoolPolicy {
        &self.policy
    }

    // ------------------------------------------------------------ reads

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// The tenant of a live tenant-admin or member token.
    pub fn tenant_by_token_hash(&self, hash: &str) -> Option<String> {
        self.token_by_hash(hash).and_then(|t| t.tenant)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|n| &**n)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|n| &**n)
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(|j| &**j)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|j| &**j)
    }

    /// Jobs newest first (by id, descending), from the one before
    /// `before` when given: the order job lists page in.
    pub fn jobs_newest_first(&self, before: Option<JobId>) -> impl Iterator<Item = &Job> {
        let end = before.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.jobs
            .range((std::ops::Bound::Unbounded, end))
            .rev()
            .map(|(_, j)| &**j)
    }

    /// Pending jobs in submission order.
    pub fn pending_jobs(&self) -> impl Iterator<Item = &Job> {
        self.pending
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| &**j)
    }

    /// Pending jobs per tenant, in the planner's orders.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// Jobs holding GPUs (assigned, running, or stopping), by id.
    pub fn placed_jobs(&self) -> impl Iterator<Item = &Job> {
        self.placed
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| &**j)
    }

    /// Jobs not yet final (pending, placed or stopping), by id.
    pub fn live_jobs(&self) -> impl Iterator<Item = &Job> {
        self.live
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| &**j)
    }

    /// Jobs with a task still running (or starting) on `node`.
    pub fn jobs_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.live_jobs().filter(move |j| {
            j.state.is_placed() && j.tasks.iter().any(|t| t.node == node && !t.finished)
        })
    }
}
