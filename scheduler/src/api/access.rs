//! Who may call what: the role table over every RPC, and the per-token
//! request rate limit at the API edge.
//!
//! The table is the one place that says which roles an RPC admits; the
//! handlers add the tenant check of the object they touch (another
//! tenant's object is NOT_FOUND, never PERMISSION_DENIED).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::state::Role;

/// Every RPC of the client, admin, agent and cluster services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    SubmitJob,
    GetJob,
    ListJobs,
    CancelJob,
    WatchJob,
    GetJobLogs,
    ExplainJob,
    CreateTenant,
    ListTenants,
    ListNodes,
    CordonNode,
    UncordonNode,
    DrainNode,
    LabelNode,
    SetTenantQuota,
    SetTenantShare,
    SetClassCap,
    GetTenant,
    ClearGpu,
    CreateToken,
    ListTokens,
    RevokeToken,
    SuspendTenant,
    ResumeTenant,
    ListAudit,
    ExportAudit,
    ListRefusedCalls,
    AgentSession,
    ClusterStatus,
    AddMember,
    RemoveMember,
    TransferLeader,
    Snapshot,
    GetUsageReport,
    GetSettlement,
    ExportUsage,
    SetPrices,
    ListPrices,
    SetBudget,
    ListBudgets,
}

use Role::{Admin, Agent, Auditor, Member, TenantAdmin};

const READERS: &[Role] = &[Admin, Auditor, TenantAdmin, Member];
const ADMIN: &[Role] = &[Admin];
const OPERATORS_VIEW: &[Role] = &[Admin, Auditor];

impl Rpc {
    pub const ALL: [Rpc; 40] = [
        Rpc::SubmitJob,
        Rpc::GetJob,
        Rpc::ListJobs,
        Rpc::CancelJob,
        Rpc::WatchJob,
        Rpc::GetJobLogs,
        Rpc::ExplainJob,
        Rpc::CreateTenant,
        Rpc::ListTenants,
        Rpc::ListNodes,
        Rpc::CordonNode,
        Rpc::UncordonNode,
        Rpc::DrainNode,
        Rpc::LabelNode,
        Rpc::SetTenantQuota,
        Rpc::SetTenantShare,
        Rpc::SetClassCap,
        Rpc::GetTenant,
        Rpc::ClearGpu,
        Rpc::CreateToken,
        Rpc::ListTokens,
        Rpc::RevokeToken,
        Rpc::SuspendTenant,
        Rpc::ResumeTenant,
        Rpc::ListAudit,
        Rpc::ExportAudit,
        Rpc::ListRefusedCalls,
        Rpc::AgentSession,
        Rpc::ClusterStatus,
        Rpc::AddMember,
        Rpc::RemoveMember,
        Rpc::TransferLeader,
        Rpc::Snapshot,
        Rpc::GetUsageReport,
        Rpc::GetSettlement,
        Rpc::ExportUsage,
        Rpc::SetPrices,
        Rpc::ListPrices,
        Rpc::SetBudget,
        Rpc::ListBudgets,
    ];

    /// The roles this RPC admits (docs/security.md, "Roles").
    pub fn roles(self) -> &'static [Role] {
        match self {
            // Jobs belong to a tenant: only its tokens submit.
            Rpc::SubmitJob => &[TenantAdmin, Member],
            Rpc::GetJob | Rpc::ListJobs | Rpc::WatchJob | Rpc::GetJobLogs | Rpc::ExplainJob => {
                READERS
            }
            Rpc::CancelJob => &[Admin, TenantAdmin, Member],
            Rpc::ListTenants
            | Rpc::ListNodes
            | Rpc::ListAudit
            | Rpc::ExportAudit
            | Rpc::ListRefusedCalls
            | Rpc::GetSettlement => OPERATORS_VIEW,
            // A tenant's tokens read their own tenant's usage (the handler
            // scopes it); the price book is public to every member.
            Rpc::GetUsageReport | Rpc::ExportUsage | Rpc::ListBudgets | Rpc::ListPrices => READERS,
            // Clients find the leader with it.
            Rpc::ClusterStatus => READERS,
            Rpc::GetTenant => &[Admin, Auditor, TenantAdmin],
            Rpc::CreateToken | Rpc::RevokeToken => &[Admin, TenantAdmin],
            Rpc::ListTokens => &[Admin, Auditor, TenantAdmin],
            Rpc::AgentSession => &[Agent],
            Rpc::CreateTenant
            | Rpc::CordonNode
            | Rpc::UncordonNode
            | Rpc::DrainNode
            | Rpc::LabelNode
            | Rpc::SetTenantQuota
            | Rpc::SetTenantShare
            | Rpc::SetClassCap
            | Rpc::ClearGpu
            | Rpc::SuspendTenant
            | Rpc::ResumeTenant
            | Rpc::AddMember
            | Rpc::RemoveMember
            | Rpc::TransferLeader
            | Rpc::Snapshot
            | Rpc::SetPrices
            | Rpc::SetBudget => ADMIN,
        }
    }

    /// Whether the RPC changes something (its denials are audited).
    pub fn is_mutating(self) -> bool {
        !matches!(
            self,
            Rpc::GetJob
                | Rpc::ListJobs
                | Rpc::WatchJob
                | Rpc::GetJobLogs
                | Rpc::ExplainJob
                | Rpc::ListTenants
                | Rpc::ListNodes
                | Rpc::GetTenant
                | Rpc::ListTokens
                | Rpc::ListAudit
                | Rpc::ExportAudit
                | Rpc::ListRefusedCalls
                | Rpc::ClusterStatus
                | Rpc::AgentSession
                | Rpc::GetUsageReport
                | Rpc::GetSettlement
                | Rpc::ExportUsage
                | Rpc::ListPrices
                | Rpc::ListBudgets
        )
    }

    /// The audit trail's name for the action, e.g. `job.submit`.
    pub fn action(self) -> &'static str {
        match self {
            Rpc::SubmitJob => "job.submit",
            Rpc::GetJob => "job.get",
            Rpc::ListJobs => "job.list",
            Rpc::CancelJob => "job.cancel",
            Rpc::WatchJob => "job.watch",
            Rpc::GetJobLogs => "job.logs",
            Rpc::ExplainJob => "job.explain",
            Rpc::CreateTenant => "tenant.create",
            Rpc::ListTenants => "tenant.list",
            Rpc::ListNodes => "node.list",
            Rpc::CordonNode => "node.cordon",
            Rpc::UncordonNode => "node.uncordon",
            Rpc::DrainNode => "node.drain",
            Rpc::LabelNode => "node.label",
            Rpc::SetTenantQuota => "tenant.quota",
            Rpc::SetTenantShare => "tenant.share",
            Rpc::SetClassCap => "tenant.class-cap",
            Rpc::GetTenant => "tenant.get",
            Rpc::ClearGpu => "gpu.clear",
            Rpc::CreateToken => "token.create",
            Rpc::ListTokens => "token.list",
            Rpc::RevokeToken => "token.revoke",
            Rpc::SuspendTenant => "tenant.suspend",
            Rpc::ResumeTenant => "tenant.resume",
            Rpc::ListAudit => "audit.list",
            Rpc::ExportAudit => "audit.export",
            Rpc::ListRefusedCalls => "audit.refused",
            Rpc::AgentSession => "agent.session",
            Rpc::ClusterStatus => "cluster.status",
            Rpc::AddMember => "cluster.add-member",
            Rpc::RemoveMember => "cluster.remove-member",
            Rpc::TransferLeader => "cluster.transfer-leader",
            Rpc::Snapshot => "cluster.snapshot",
            Rpc::GetUsageReport => "usage.report",
            Rpc::GetSettlement => "usage.settlement",
            Rpc::ExportUsage => "usage.export",
            Rpc::SetPrices => "price.set",
            Rpc::ListPrices => "price.list",
            Rpc::SetBudget => "budget.set",
            Rpc::ListBudgets => "budget.list",
        }
    }

    /// Why `role` may not call this RPC, naming the roles that may; `None`
    /// when it may.
    pub fn denial(self, role: Role) -> Option<String> {
        let roles = self.roles();
        if roles.contains(&role) {
            return None;
        }
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        let needed = match names.as_slice() {
            [one] => format!("the {one} role"),
            [rest @ .., last] => format!("one of the roles {} or {last}", rest.join(", ")),
            [] => "a role no token has".to_string(),
        };
        Some(format!(
            "{} needs {needed}; this is a{} {role} token",
            self.action(),
            if matches!(role, Role::Admin | Role::Auditor | Role::Agent) {
                "n"
            } else {
                ""
            }
        ))
    }
}

/// A token bucket per token: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 200.0,
            burst: 400,
        }
    }
}

/// The request rate limiter. It lives at the edge of each replica, not in
/// the replicated state: a token's budget is per replica it calls.
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets idle this long are full again and are forgotten.
const IDLE_BUCKET: Duration = Duration::from_secs(600);

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one
    /// is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < IDLE_BUCKET);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_name_the_roles_needed() {
        assert_eq!(
            Rpc::SubmitJob.denial(Role::Auditor).as_deref(),
            Some("job.submit needs one of the roles tenant-admin or member; this is an auditor token")
        );
        assert_eq!(
            Rpc::SuspendTenant.denial(Role::Member).as_deref(),
            Some("tenant.suspend needs the admin role; this is a member token")
        );
        assert_eq!(Rpc::AgentSession.denial(Role::Agent), None);
    }

    #[test]
    fn only_the_agent_role_opens_sessions_and_agents_do_nothing_else() {
        for rpc in Rpc::ALL {
            let agent_ok = rpc.denial(Role::Agent).is_none();
            assert_eq!(agent_ok, rpc == Rpc::AgentSession, "{rpc:?}");
        }
    }

    #[test]
    fn auditors_change_nothing() {
        for rpc in Rpc::ALL.into_iter().filter(|r| r.is_mutating()) {
            assert!(rpc.denial(Role::Auditor).is_some(), "{rpc:?}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let l = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("a", t0).is_ok());
        }
        let wait = l.take("a", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        // Another token has its own bucket.
        assert!(l.take("b", t0).is_ok());
        assert!(l.take("a", t0 + Duration::from_millis(100)).is_ok());
    }
}
