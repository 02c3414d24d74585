//! The role table over every RPC, and tenant isolation, against the real
//! services on a single in-process replica.

use std::time::Duration;

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use edupool_proto::v1::cluster_service_server::ClusterService;
use edupool_proto::v1::job_service_server::JobService;
use edupool_proto::v1::usage_service_server::UsageService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Status};

use super::admin::Admin;
use super::cluster::Cluster;
use super::convert::JobLimits;
use super::jobs::Jobs;
use super::usage::Usage;
use super::{token_hash, Auth, RateLimit, Rpc};
use crate::raft::{Replica, ReplicaConfig};
use crate::sessions::Sessions;
use crate::state::tests_support::{gpus, spec};
use crate::state::{Actor, ApiToken, Command, JobClass, JobId, Outcome, Role};

pub(super) const ADMIN_SECRET: &str = "admin-secret-0123456789";
const AGENT_SECRET: &str = "agent-secret-0123456789";

pub(super) struct Pool {
    pub(super) replica: Replica,
    pub(super) jobs: Jobs,
    pub(super) admin: Admin,
    cluster: Cluster,
    pub(super) usage: Usage,
    stop: CancellationToken,
    tasks: TaskTracker,
    _dir: tempfile::TempDir,
}

impl Pool {
    pub(super) async fn start() -> Pool {
        Self::start_with(JobLimits::default()).await
    }

    pub(super) async fn start_with(limits: JobLimits) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let replica = Replica::start(
            ReplicaConfig::single(1, dir.path().to_path_buf(), Duration::from_millis(10)),
            stop.clone(),
            &tasks,
        )
        .unwrap();
        let mut leadership = replica.leadership();
        tokio::time::timeout(
            Duration::from_secs(10),
            leadership.wait_for(|l| l.is_leader),
        )
        .await
        .expect("a single replica elects itself")
        .unwrap();
        let auth = Auth::with_rate_limit(
            ADMIN_SECRET,
            AGENT_SECRET,
            replica.clone(),
            RateLimit {
                per_second: 1e6,
                burst: 1_000_000,
            },
        );
        let sessions = Sessions::default();
        let pool = Pool {
            jobs: Jobs {
                replica: replica.clone(),
                auth: auth.clone(),
                sessions: sessions.clone(),
                limits,
                tasks: tasks.clone(),
                changes: super::changes::ChangeLog::start(&replica, &tasks, stop.clone()),
                streams: Default::default(),
            },
            admin: Admin {
                replica: replica.clone(),
                auth: auth.clone(),
                sessions,
            },
            cluster: Cluster {
                replica: replica.clone(),
                auth: auth.clone(),
            },
            usage: Usage {
                replica: replica.clone(),
                auth,
            },
            replica,
            stop,
            tasks,
            _dir: dir,
        };
        for t in ["a", "b", "c"] {
            pool.propose(Command::CreateTenant {
                name: t.into(),
                token_hash: token_hash(&format!("initial-{t}")),
            })
            .await;
        }
        pool.propose(Command::AssignUidOffsets).await;
        pool.propose(Command::NodeConnected {
            node: "n1".into(),
            gpus: gpus("n1", 4),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            // Room for the pool's default CPU and memory per GPU.
            cpu_millicores: 1_000_000,
            memory_bytes: 1 << 44,
        })
        .await;
        pool
    }

    pub(super) async fn propose(&self, cmd: Command) -> Outcome {
        self.replica
            .propose(cmd)
            .await
            .expect("the command applies")
    }

    /// A token with a known secret (`secret-<name>`); returns its id.
    pub(super) async fn token(&self, name: &str, role: Role, tenant: Option<&str>) -> String {
        let token = ApiToken {
            id: String::new(),
            name: name.into(),
            role,
            tenant: tenant.map(str::to_string),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            created_by: "test".into(),
            hash: token_hash(&format!("secret-{name}")),
        };
        match self.propose(Command::CreateToken { token }).await {
            Outcome::Token(id) => id,
            other => panic!("no token: {other:?}"),
        }
    }

    /// A pending job of `tenant`, submitted by token `owner`.
    pub(super) async fn job(&self, tenant: &str, owner: &str) -> JobId {
        let out = self
            .propose(Command::Audited {
                actor: Actor {
                    token: owner.into(),
                    ..Default::default()
                },
                action: Rpc::SubmitJob.action().into(),
                target: String::new(),
                cmd: Box::new(Command::SubmitJob {
                    tenant: tenant.into(),
                    spec: spec(1, JobClass::Batch),
                }),
            })
            .await;
        match out {
            Outcome::Job(id) => id,
            other => panic!("no job: {other:?}"),
        }
    }

    pub(super) async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

pub(super) fn req<T>(secret: &str, body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    r
}

/// A short name for how a call ended.
fn outcome<T>(r: Result<T, Status>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(s) => match s.code() {
            Code::PermissionDenied => "denied",
            Code::NotFound => "notfound",
            Code::Unauthenticated => "unauth",
            Code::InvalidArgument => "invalid",
            Code::FailedPrecondition => "precond",
            Code::Unavailable => "unavail",
            _ => "other",
        },
    }
}

/// Calls `rpc` as `secret` with a request that succeeds when the role
/// admits it; objects are tenant a's, or fresh ones per call.
async fn call(p: &Pool, rpc: Rpc, secret: &str, member_id: &str) -> &'static str {
    let job_a = p.job("a", member_id).await.to_string();
    let fresh = format!("t{}", rand::random::<u32>());
    match rpc {
        Rpc::SubmitJob => outcome(
            p.jobs
                .submit_job(req(
                    secret,
                    pb::SubmitJobRequest {
                        array: 0,
                        request_id: String::new(),
                        spec: Some(pb::JobSpec {
                            command: vec!["true".into()],
                            gpus: 1,
                            ..Default::default()
                        }),
                    },
                ))
                .await,
        ),
        Rpc::GetJob => outcome(
            p.jobs
                .get_job(req(secret, pb::GetJobRequest { id: job_a }))
                .await,
        ),
        Rpc::ListJobs => outcome(
            p.jobs
                .list_jobs(req(secret, pb::ListJobsRequest::default()))
                .await,
        ),
        Rpc::CancelJob => outcome(
            p.jobs
                .cancel_job(req(
                    secret,
                    pb::CancelJobRequest {
                        id: job_a,
                        reason: String::new(),
                    },
                ))
                .await,
        ),
        Rpc::WatchJob => outcome(
            p.jobs
                .watch_job(req(secret, pb::WatchJobRequest { id: job_a }))
                .await,
        ),
        Rpc::GetJobLogs => outcome(
            p.jobs
                .get_job_logs(req(
                    secret,
                    pb::GetJobLogsRequest {
                        id: job_a,
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Rpc::ExplainJob => outcome(
            p.jobs
                .explain_job(req(secret, pb::ExplainJobRequest { id: job_a }))
                .await,
        ),
        Rpc::CreateTenant => outcome(
            p.admin
                .create_tenant(req(secret, pb::CreateTenantRequest { name: fresh }))
                .await,
        ),
        Rpc::ListTenants => outcome(
            p.admin
                .list_tenants(req(secret, pb::ListTenantsRequest::default()))
                .await,
        ),
        Rpc::ListNodes => outcome(
            p.admin
                .list_nodes(req(secret, pb::ListNodesRequest::default()))
                .await,
        ),
        Rpc::CordonNode => outcome(
            p.admin
                .cordon_node(req(secret, pb::NodeRequest { name: "n1".into() }))
                .await,
        ),
        Rpc::UncordonNode => outcome(
            p.admin
                .uncordon_node(req(secret, pb::NodeRequest { name: "n1".into() }))
                .await,
        ),
        Rpc::DrainNode => {
            let r = p
                .admin
                .drain_node(req(secret, pb::NodeRequest { name: "n1".into() }))
                .await;
            let _ = p
                .admin
                .uncordon_node(req(ADMIN_SECRET, pb::NodeRequest { name: "n1".into() }))
                .await;
            outcome(r)
        }
        Rpc::LabelNode => outcome(
            p.admin
                .label_node(req(
                    secret,
                    pb::LabelNodeRequest {
                        name: "n1".into(),
                        labels: Some(pb::NodeLabels::default()),
                    },
                ))
                .await,
        ),
        Rpc::SetTenantQuota => outcome(
            p.admin
                .set_tenant_quota(req(
                    secret,
                    pb::SetTenantQuotaRequest {
                        tenant: "a".into(),
                        quota: Some(pb::Quota {
                            gpu_class: "A100".into(),
                            guaranteed: 1,
                            borrow_limit: -1,
                        }),
                    },
                ))
                .await,
        ),
        Rpc::SetTenantShare => outcome(
            p.admin
                .set_tenant_share(req(
                    secret,
                    pb::SetTenantShareRequest {
                        tenant: "a".into(),
                        weight_milli: 1000,
                        equity_milli: 0,
                    },
                ))
                .await,
        ),
        Rpc::SetClassCap => outcome(
            p.admin
                .set_class_cap(req(
                    secret,
                    pb::SetClassCapRequest {
                        tenant: "a".into(),
                        job_class: pb::JobClass::Batch as i32,
                        max_gpus: -1,
                    },
                ))
                .await,
        ),
        Rpc::GetTenant => outcome(
            p.admin
                .get_tenant(req(secret, pb::GetTenantRequest { name: "a".into() }))
                .await,
        ),
        // No GPU is unhealthy: an admitted call is refused by the state.
        Rpc::ClearGpu => outcome(
            p.admin
                .clear_gpu(req(
                    secret,
                    pb::ClearGpuRequest {
                        node: "n1".into(),
                        gpu_uuid: crate::state::tests_support::uuid("n1", 0),
                    },
                ))
                .await,
        ),
        Rpc::CreateToken => outcome(
            p.admin
                .create_token(req(
                    secret,
                    pb::CreateTokenRequest {
                        role: "member".into(),
                        tenant: "a".into(),
                        name: fresh,
                        expires_in_seconds: 0,
                    },
                ))
                .await,
        ),
        Rpc::ListTokens => outcome(
            p.admin
                .list_tokens(req(secret, pb::ListTokensRequest::default()))
                .await,
        ),
        Rpc::RevokeToken => {
            let id = p.token(&fresh, Role::Member, Some("a")).await;
            outcome(
                p.admin
                    .revoke_token(req(secret, pb::RevokeTokenRequest { id }))
                    .await,
            )
        }
        Rpc::SuspendTenant => outcome(
            p.admin
                .suspend_tenant(req(
                    secret,
                    pb::SuspendTenantRequest {
                        tenant: "c".into(),
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Rpc::ResumeTenant => outcome(
            p.admin
                .resume_tenant(req(secret, pb::ResumeTenantRequest { tenant: "c".into() }))
                .await,
        ),
        Rpc::ListAudit => outcome(
            p.admin
                .list_audit(req(secret, pb::ListAuditRequest::default()))
                .await,
        ),
        Rpc::ExportAudit => outcome(
            p.admin
                .export_audit(req(secret, pb::ExportAuditRequest::default()))
                .await,
        ),
        Rpc::ListRefusedCalls => outcome(
            p.admin
                .list_refused_calls(req(secret, pb::ListRefusedCallsRequest::default()))
                .await,
        ),
        // The session handler's first step; a stream cannot be built here.
        Rpc::AgentSession => outcome(p.jobs.auth.authorize(&req(secret, ()), rpc).await),
        Rpc::ClusterStatus => outcome(
            p.cluster
                .get_status(req(secret, pb::GetClusterStatusRequest::default()))
                .await,
        ),
        // Admitted calls with an id no replica has: refused after the role check.
        Rpc::AddMember => outcome(
            p.cluster
                .add_member(req(
                    secret,
                    pb::AddMemberRequest {
                        id: 0,
                        address: "127.0.0.1:1".into(),
                    },
                ))
                .await,
        ),
        Rpc::RemoveMember => outcome(
            p.cluster
                .remove_member(req(secret, pb::RemoveMemberRequest { id: 99 }))
                .await,
        ),
        Rpc::TransferLeader => outcome(
            p.cluster
                .transfer_leader(req(secret, pb::TransferLeaderRequest { to: 1 }))
                .await,
        ),
        Rpc::Snapshot => outcome(
            p.cluster
                .snapshot(req(secret, pb::SnapshotRequest {}))
                .await,
        ),
        Rpc::GetUsageReport => outcome(
            p.usage
                .get_usage_report(req(
                    secret,
                    pb::UsageReportRequest {
                        tenant: String::new(),
                        from_ms: 0,
                        to_ms: 1,
                        by: "day".into(),
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Rpc::GetSettlement => outcome(
            p.usage
                .get_settlement(req(
                    secret,
                    pb::SettlementRequest {
                        from_ms: 0,
                        to_ms: 1,
                    },
                ))
                .await,
        ),
        Rpc::ExportUsage => outcome(
            p.usage
                .export_usage(req(
                    secret,
                    pb::ExportUsageRequest {
                        tenant: String::new(),
                        from_ms: 0,
                        to_ms: 1,
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Rpc::SetPrices => outcome(
            p.usage
                .set_prices(req(
                    secret,
                    pb::SetPricesRequest {
                        currency: "CNY".into(),
                        energy_per_kwh_milli: Some(800),
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Rpc::ListPrices => outcome(
            p.usage
                .list_prices(req(secret, pb::ListPricesRequest::default()))
                .await,
        ),
        Rpc::SetBudget => outcome(
            p.usage
                .set_budget(req(
                    secret,
                    pb::SetBudgetRequest {
                        tenant: "a".into(),
                        period: "month".into(),
                        soft_milli: Some(1_000),
                        hard_milli: None,
                        remove: false,
                    },
                ))
                .await,
        ),
        Rpc::ListBudgets => outcome(
            p.usage
                .list_budgets(req(secret, pb::ListBudgetsRequest::default()))
                .await,
        ),
    }
}

/// Rows: every RPC; columns: admin, auditor, tenant-admin and member of
/// tenant a, agent. The jobs acted on are tenant a's, submitted by the
/// member.
const EXPECTED: &str = "
SubmitJob       denied   denied   ok       ok       denied
GetJob          ok       ok       ok       ok       denied
ListJobs        ok       ok       ok       ok       denied
CancelJob       ok       denied   ok       ok       denied
WatchJob        ok       ok       ok       ok       denied
GetJobLogs      ok       ok       ok       ok       denied
ExplainJob      ok       ok       ok       ok       denied
CreateTenant    ok       denied   denied   denied   denied
ListTenants     ok       ok       denied   denied   denied
ListNodes       ok       ok       denied   denied   denied
CordonNode      ok       denied   denied   denied   denied
UncordonNode    ok       denied   denied   denied   denied
DrainNode       ok       denied   denied   denied   denied
LabelNode       ok       denied   denied   denied   denied
SetTenantQuota  ok       denied   denied   denied   denied
SetTenantShare  ok       denied   denied   denied   denied
SetClassCap     ok       denied   denied   denied   denied
GetTenant       ok       ok       ok       denied   denied
ClearGpu        precond  denied   denied   denied   denied
CreateToken     ok       denied   ok       denied   denied
ListTokens      ok       ok       ok       denied   denied
RevokeToken     ok       denied   ok       denied   denied
SuspendTenant   ok       denied   denied   denied   denied
ResumeTenant    ok       denied   denied   denied   denied
ListAudit       ok       ok       denied   denied   denied
ExportAudit     ok       ok       denied   denied   denied
ListRefusedCalls ok      ok       denied   denied   denied
AgentSession    denied   denied   denied   denied   ok
ClusterStatus   ok       ok       ok       ok       denied
AddMember       invalid  denied   denied   denied   denied
RemoveMember    precond  denied   denied   denied   denied
TransferLeader  ok       denied   denied   denied   denied
Snapshot        ok       denied   denied   denied   denied
GetUsageReport  ok       ok       ok       ok       denied
GetSettlement   ok       ok       denied   denied   denied
ExportUsage     ok       ok       ok       ok       denied
SetPrices       ok       denied   denied   denied   denied
ListPrices      ok       ok       ok       ok       denied
SetBudget       ok       denied   denied   denied   denied
ListBudgets     ok       ok       ok       ok       denied
";

fn normalize(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_roles_of_the_table() {
    let p = Pool::start().await;
    let member = p.token("member-a", Role::Member, Some("a")).await;
    p.token("tadmin-a", Role::TenantAdmin, Some("a")).await;
    p.token("auditor", Role::Auditor, None).await;
    let columns = [
        ADMIN_SECRET.to_string(),
        "secret-auditor".into(),
        "secret-tadmin-a".into(),
        "secret-member-a".into(),
        AGENT_SECRET.into(),
    ];
    let mut actual = String::new();
    for rpc in Rpc::ALL {
        actual.push_str(&format!("{rpc:?}"));
        for secret in &columns {
            actual.push(' ');
            actual.push_str(call(&p, rpc, secret, &member).await);
        }
        actual.push('\n');
    }
    assert_eq!(normalize(&actual), normalize(EXPECTED), "\n{actual}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_jobs_are_not_found_and_never_listed() {
    let p = Pool::start().await;
    let member_a = p.token("member-a", Role::Member, Some("a")).await;
    p.token("member-b", Role::Member, Some("b")).await;
    p.token("tadmin-b", Role::TenantAdmin, Some("b")).await;
    let job = p.job("a", &member_a).await.to_string();
    for secret in ["secret-member-b", "secret-tadmin-b"] {
        let get = p
            .jobs
            .get_job(req(secret, pb::GetJobRequest { id: job.clone() }))
            .await;
        assert_eq!(outcome(get), "notfound");
        let cancel = p
            .jobs
            .cancel_job(req(
                secret,
                pb::CancelJobRequest {
                    id: job.clone(),
                    reason: String::new(),
                },
            ))
            .await;
        assert_eq!(outcome(cancel), "notfound");
        let logs = p
            .jobs
            .get_job_logs(req(
                secret,
                pb::GetJobLogsRequest {
                    id: job.clone(),
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(outcome(logs), "notfound");
        let watch = p
            .jobs
            .watch_job(req(secret, pb::WatchJobRequest { id: job.clone() }))
            .await;
        assert_eq!(outcome(watch), "notfound");
        let explain = p
            .jobs
            .explain_job(req(secret, pb::ExplainJobRequest { id: job.clone() }))
            .await;
        assert_eq!(outcome(explain), "notfound");
        let listed = p
            .jobs
            .list_jobs(req(secret, pb::ListJobsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert!(listed.iter().all(|j| j.tenant == "b"), "{listed:?}");
        let asked = p
            .jobs
            .list_jobs(req(
                secret,
                pb::ListJobsRequest {
                    tenant: "a".into(),
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(outcome(asked), "denied");
        let tenant = p
            .admin
            .get_tenant(req(secret, pb::GetTenantRequest { name: "a".into() }))
            .await;
        assert_eq!(
            outcome(tenant),
            if secret.contains("tadmin") {
                "notfound"
            } else {
                "denied"
            }
        );
    }
    // The job is untouched.
    let state = p
        .replica
        .read(|s| s.job(job.parse().unwrap()).unwrap().state);
    assert_eq!(state, crate::state::JobState::Pending);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_controls_only_its_own_jobs_and_denials_are_audited() {
    let p = Pool::start().await;
    let alice = p.token("alice", Role::Member, Some("a")).await;
    p.token("bob", Role::Member, Some("a")).await;
    let job = p.job("a", &alice).await.to_string();
    let r = p
        .jobs
        .cancel_job(req(
            "secret-bob",
            pb::CancelJobRequest {
                id: job.clone(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::PermissionDenied);
    assert!(r.message().contains("tenant-admin"), "{}", r.message());
    // Bob still sees the tenant's job.
    assert!(p
        .jobs
        .get_job(req("secret-bob", pb::GetJobRequest { id: job.clone() }))
        .await
        .is_ok());
    let denied = p.replica.read(|s| {
        s.refused_calls()
            .any(|r| r.action == "job.cancel" && r.last_target == job && r.actor.name == "bob")
    });
    assert!(denied, "the denied cancel is counted with its target");
    let suspend = p
        .admin
        .suspend_tenant(req(
            "secret-bob",
            pb::SuspendTenantRequest {
                tenant: "a".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(outcome(suspend), "denied");
    let recorded = p.replica.read(|s| {
        s.refused_calls().any(|r| {
            r.action == "tenant.suspend"
                && r.last_target == "a"
                && r.actor.role == Some(Role::Member)
                && matches!(r.result, crate::state::AuditResult::Denied(_))
        })
    });
    assert!(recorded, "the denied suspend names its target");
    let ok = p
        .jobs
        .cancel_job(req(
            "secret-alice",
            pb::CancelJobRequest {
                id: job.clone(),
                reason: String::new(),
            },
        ))
        .await;
    assert_eq!(outcome(ok), "ok");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_tokens_are_refused() {
    let p = Pool::start().await;
    let id = p.token("gone", Role::Member, Some("a")).await;
    let list = |s: &'static str| p.jobs.list_jobs(req(s, pb::ListJobsRequest::default()));
    assert_eq!(outcome(list("secret-gone").await), "ok");
    p.propose(Command::RevokeToken { id }).await;
    assert_eq!(outcome(list("secret-gone").await), "unauth");
    // An expiry in the past.
    let token = ApiToken {
        id: String::new(),
        name: "old".into(),
        role: Role::Auditor,
        tenant: None,
        created_at: 0,
        expires_at: Some(1),
        revoked_at: None,
        created_by: "test".into(),
        hash: token_hash("secret-old"),
    };
    p.propose(Command::CreateToken { token }).await;
    let e = list("secret-old").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
    // The initial tenant token is a tenant-admin of its tenant.
    let t = p
        .admin
        .get_tenant(req("initial-a", pb::GetTenantRequest { name: "a".into() }))
        .await;
    assert_eq!(outcome(t), "ok");
    p.stop().await;
}

fn submit_req(secret: &str) -> Request<pb::SubmitJobRequest> {
    req(
        secret,
        pb::SubmitJobRequest {
            array: 0,
            request_id: String::new(),
            spec: Some(pb::JobSpec {
                command: vec!["true".into()],
                gpus: 1,
                ..Default::default()
            }),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_pending_limit_is_refused_and_others_are_not() {
    let p = Pool::start_with(JobLimits {
        max_pending_per_tenant: 2,
        ..JobLimits::default()
    })
    .await;
    p.token("member-a", Role::Member, Some("a")).await;
    p.token("member-b", Role::Member, Some("b")).await;
    // The node has 4 GPUs and nothing places jobs here: they stay pending.
    for _ in 0..2 {
        p.jobs
            .submit_job(submit_req("secret-member-a"))
            .await
            .unwrap();
    }
    let before = p.replica.read(|s| s.jobs().count());
    let e = p
        .jobs
        .submit_job(submit_req("secret-member-a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("2 pending jobs"), "{}", e.message());
    assert_eq!(p.replica.read(|s| s.jobs().count()), before);
    assert!(p
        .jobs
        .submit_job(submit_req("secret-member-b"))
        .await
        .is_ok());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_hands_out_only_its_own_tenants_member_and_tenant_admin_tokens() {
    let p = Pool::start().await;
    p.token("tadmin-a", Role::TenantAdmin, Some("a")).await;
    let other = p.token("member-b", Role::Member, Some("b")).await;
    let create = |role: &str, tenant: &str| {
        p.admin.create_token(req(
            "secret-tadmin-a",
            pb::CreateTokenRequest {
                role: role.into(),
                tenant: tenant.into(),
                name: "x".into(),
                expires_in_seconds: 0,
            },
        ))
    };
    assert_eq!(outcome(create("member", "a").await), "ok");
    assert_eq!(outcome(create("tenant-admin", "a").await), "ok");
    assert_eq!(outcome(create("member", "b").await), "notfound");
    assert_eq!(outcome(create("auditor", "").await), "denied");
    assert_eq!(outcome(create("admin", "").await), "denied");
    assert_eq!(outcome(create("member", "").await), "invalid");
    let revoke = p
        .admin
        .revoke_token(req("secret-tadmin-a", pb::RevokeTokenRequest { id: other }))
        .await;
    assert_eq!(outcome(revoke), "notfound");
    let listed = p
        .admin
        .list_tokens(req("secret-tadmin-a", pb::ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(listed.iter().all(|t| t.tenant == "a"), "{listed:?}");
    p.stop().await;
}

fn array_req(secret: &str, array: u32) -> Request<pb::SubmitJobRequest> {
    let mut r = submit_req(secret);
    r.get_mut().array = array;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_array_is_submitted_whole_or_refused_whole() {
    let p = Pool::start_with(JobLimits {
        max_pending_per_tenant: 5,
        ..JobLimits::default()
    })
    .await;
    let token = p.token("member-a", Role::Member, Some("a")).await;
    let reply = p
        .jobs
        .submit_job(array_req("secret-member-a", 3))
        .await
        .unwrap()
        .into_inner();
    let first = reply.job.unwrap();
    assert_eq!(reply.array_job_ids.len(), 3);
    assert_eq!(reply.array_job_ids[0], first.id);
    let envs: Vec<(String, String)> = p.replica.read(|s| {
        reply
            .array_job_ids
            .iter()
            .map(|id| {
                let env = &s.job(id.parse().unwrap()).unwrap().spec.env;
                (
                    env["EDUPOOL_ARRAY_INDEX"].clone(),
                    env["EDUPOOL_ARRAY_JOB_ID"].clone(),
                )
            })
            .collect()
    });
    let want: Vec<(String, String)> = (0..3).map(|i| (i.to_string(), first.id.clone())).collect();
    assert_eq!(envs, want);
    // Each job of the array is its submitter's, as a single job would be.
    let owned = p.replica.read(|s| {
        reply
            .array_job_ids
            .iter()
            .all(|id| s.job_owner(id.parse().unwrap()) == Some(token.as_str()))
    });
    assert!(
        owned,
        "every job of the array is owned by the submitting token"
    );

    // Three more would pass the limit of five: none is submitted.
    let before = p.replica.read(|s| s.jobs().count());
    let e = p
        .jobs
        .submit_job(array_req("secret-member-a", 3))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("an array of 3 would make 6"),
        "{}",
        e.message()
    );
    let too_big = p
        .jobs
        .submit_job(array_req("secret-member-a", crate::state::MAX_ARRAY + 1))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(
        too_big.message().contains("submit it in parts"),
        "{}",
        too_big.message()
    );
    assert_eq!(p.replica.read(|s| s.jobs().count()), before);
    p.stop().await;
}
