//! List calls against the real services on one in-process replica:
//! paging, ordering, summaries, and the counts lists show.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use edupool_proto::v1::job_service_server::JobService;
use tonic::Code;

use super::authz_tests::{req, Pool, ADMIN_SECRET};
use crate::state::tests_support::{gpus, spec};
use crate::state::{Capacity, Command, JobClass, Outcome, Role, TaskPlacement};

async fn list_jobs(p: &Pool, secret: &str, r: pb::ListJobsRequest) -> pb::ListJobsResponse {
    p.jobs.list_jobs(req(secret, r)).await.unwrap().into_inner()
}

/// Every job of `tenant` through its pages, and how many pages it took.
async fn all_jobs(p: &Pool, secret: &str, page_size: u32) -> (Vec<pb::Job>, usize) {
    let (mut jobs, mut pages, mut token) = (vec![], 0, String::new());
    loop {
        let r = pb::ListJobsRequest {
            page_size,
            page_token: token,
            ..Default::default()
        };
        let page = list_jobs(p, secret, r).await;
        pages += 1;
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return (jobs, pages);
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn jobs_list_newest_first_in_pages_of_summaries() {
    let p = Pool::start().await;
    p.token("zed", Role::TenantAdmin, Some("a")).await;
    let mut big = spec(1, JobClass::Batch);
    big.env = (0..8)
        .map(|i| (format!("V{i}"), "x".repeat(60 * 1024)))
        .collect();
    let mut ids = vec![];
    for _ in 0..5 {
        let out = p
            .propose(Command::SubmitJob {
                tenant: "a".into(),
                spec: big.clone(),
            })
            .await;
        let Outcome::Job(id) = out else { panic!() };
        ids.push(id.to_string());
    }
    p.job("b", "someone").await;
    ids.reverse();
    let (jobs, pages) = all_jobs(&p, "secret-zed", 2).await;
    assert_eq!(pages, 3);
    let got: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(got, ids, "tenant a's jobs, newest first");
    // Summaries leave out the command and env; GetJob has them.
    let spec0 = jobs[0].spec.as_ref().unwrap();
    assert!(spec0.env.is_empty() && spec0.command.is_empty());
    assert_eq!(spec0.gpus, 1);
    let full = p
        .jobs
        .get_job(req("secret-zed", pb::GetJobRequest { id: ids[0].clone() }))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(full.spec.unwrap().env.len(), 8);
    // The full view, asked for, has them too, and its pages stay within
    // their byte bound (8 x 60 KiB of env a job: two jobs a page).
    let r = pb::ListJobsRequest {
        view: pb::JobView::Full as i32,
        ..Default::default()
    };
    let page = list_jobs(&p, "secret-zed", r).await;
    assert_eq!(page.jobs.len(), 2);
    assert_eq!(page.jobs[0].spec.as_ref().unwrap().env.len(), 8);
    assert!(!page.next_page_token.is_empty());
    let bad = pb::ListJobsRequest {
        view: 9,
        ..Default::default()
    };
    let err = p.jobs.list_jobs(req("secret-zed", bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // An admin sees both tenants' jobs; the old `limit` is a page size.
    let admin = list_jobs(
        &p,
        ADMIN_SECRET,
        pb::ListJobsRequest {
            limit: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(admin.jobs.len(), 1);
    assert_eq!(admin.jobs[0].tenant, "b");
    assert!(!admin.next_page_token.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn a_bad_page_token_is_an_invalid_argument() {
    let p = Pool::start().await;
    let bad = pb::ListJobsRequest {
        page_token: "not-a-token".into(),
        ..Default::default()
    };
    let err = p.jobs.list_jobs(req(ADMIN_SECRET, bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err
        .message()
        .starts_with("page_token is not one this scheduler gave out"));
    // A token of the tenants list is refused by the nodes list.
    let tenants = p
        .admin
        .list_tenants(req(
            ADMIN_SECRET,
            pb::ListTenantsRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenants.tenants[0].name, "a");
    let err = p
        .admin
        .list_nodes(req(
            ADMIN_SECRET,
            pb::ListNodesRequest {
                page_size: 1,
                page_token: tenants.next_page_token,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err
        .message()
        .contains("from the tenants list, not the nodes list"));
    p.stop().await;
}

#[tokio::test]
async fn tenants_nodes_and_tokens_page_in_key_order() {
    let p = Pool::start().await;
    for n in ["n2", "n3"] {
        p.propose(Command::NodeConnected {
            node: n.into(),
            gpus: gpus(n, 1),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            // Room for the pool's default CPU and memory per GPU.
            cpu_millicores: 1_000_000,
            memory_bytes: 1 << 44,
        })
        .await;
    }
    let mut names = vec![];
    let mut token = String::new();
    loop {
        let page = p
            .admin
            .list_nodes(req(
                ADMIN_SECRET,
                pb::ListNodesRequest {
                    page_size: 2,
                    page_token: token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.nodes.into_iter().map(|n| n.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["n1", "n2", "n3"]);
    p.stop().await;
}

#[tokio::test]
async fn a_tenant_listing_another_tenants_tokens_is_denied() {
    let p = Pool::start().await;
    p.token("ta", Role::TenantAdmin, Some("a")).await;
    p.token("tb", Role::TenantAdmin, Some("b")).await;
    let err = p
        .admin
        .list_tokens(req(
            "secret-ta",
            pb::ListTokensRequest {
                tenant: "b".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let own = p
        .admin
        .list_tokens(req("secret-ta", pb::ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(own.tokens.iter().all(|t| t.tenant == "a"), "{own:?}");
    assert!(own.tokens.iter().any(|t| t.name == "ta"));
    p.stop().await;
}

/// A 3-node x 4-GPU gang holds 12 GPUs in the tenant list, as in the
/// tenant's own view.
#[tokio::test]
async fn a_gang_counts_every_gpu_it_holds_everywhere() {
    let p = Pool::start().await;
    for n in ["n2", "n3"] {
        p.propose(Command::NodeConnected {
            node: n.into(),
            gpus: gpus(n, 4),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            // Room for the pool's default CPU and memory per GPU.
            cpu_millicores: 1_000_000,
            memory_bytes: 1 << 44,
        })
        .await;
    }
    let mut gang = spec(4, JobClass::Training);
    gang.nodes = 3;
    let Outcome::Job(id) = p
        .propose(Command::SubmitJob {
            tenant: "a".into(),
            spec: gang,
        })
        .await
    else {
        panic!()
    };
    let tasks = ["n1", "n2", "n3"]
        .iter()
        .map(|n| TaskPlacement {
            node: n.to_string(),
            gpus: gpus(n, 4).into_iter().map(|g| g.uuid).collect(),
        })
        .collect();
    p.propose(Command::PlaceJob {
        job: id,
        tasks,
        capacity: Capacity::Guaranteed,
    })
    .await;
    let listed = p
        .admin
        .list_tenants(req(ADMIN_SECRET, pb::ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let a = listed.tenants.iter().find(|t| t.name == "a").unwrap();
    assert_eq!(a.gpus_in_use, 12);
    let shown = p
        .admin
        .get_tenant(req(ADMIN_SECRET, pb::GetTenantRequest { name: "a".into() }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let in_use: f64 = shown.classes.iter().map(|c| c.in_use).sum();
    assert_eq!(in_use, 12.0);
    p.stop().await;
}

/// Audit pages walk back in time, each oldest first, and the old `limit`
/// still gives the newest N.
#[tokio::test]
async fn audit_pages_walk_back_in_time() {
    let p = Pool::start().await;
    for _ in 0..5 {
        p.job("a", "someone").await;
    }
    let page = |page_size, page_token| {
        let r = pb::ListAuditRequest {
            action: "job.submit".into(),
            page_size,
            page_token,
            ..Default::default()
        };
        p.admin.list_audit(req(ADMIN_SECRET, r))
    };
    let seqs = |r: &pb::ListAuditResponse| r.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    let first = page(2, String::new()).await.unwrap().into_inner();
    let second = page(2, first.next_page_token.clone())
        .await
        .unwrap()
        .into_inner();
    let third = page(2, second.next_page_token.clone())
        .await
        .unwrap()
        .into_inner();
    let all: Vec<u64> = [seqs(&third), seqs(&second), seqs(&first)].concat();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(seqs(&first).len(), 2);
    assert!(third.next_page_token.is_empty());
    let old = pb::ListAuditRequest {
        action: "job.submit".into(),
        limit: 3,
        ..Default::default()
    };
    let newest = p
        .admin
        .list_audit(req(ADMIN_SECRET, old))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&newest), all[2..]);
    p.stop().await;
}

#[tokio::test]
async fn budgets_page_by_tenant() {
    use edupool_proto::v1::usage_service_server::UsageService;
    let p = Pool::start().await;
    for t in ["c", "a", "b"] {
        p.propose(Command::SetBudget {
            tenant: t.into(),
            budget: Some(crate::state::Budget {
                period: crate::state::billing::Period::Month,
                soft: Some(1000),
                hard: None,
            }),
        })
        .await;
    }
    let (mut tenants, mut page_token, mut pages) = (vec![], String::new(), 0);
    loop {
        let r = pb::ListBudgetsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        };
        let page = p
            .usage
            .list_budgets(req(ADMIN_SECRET, r))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        tenants.extend(page.budgets.into_iter().map(|b| b.tenant));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        (tenants, pages),
        (vec!["a".into(), "b".into(), "c".into()], 2)
    );
    p.stop().await;
}
