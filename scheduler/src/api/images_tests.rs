//! Images at the API edge: a job's image name is checked at submit, an
//! agent's image list when its session opens, and the start order carries
//! the job's image, data level and its tenant's uid offset.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use edupool_proto::v1::job_service_server::JobService;
use tonic::Code;

use super::authz_tests::{req, Pool, ADMIN_SECRET};
use super::convert::{self, InventoryError, Software};
use crate::state::tests_support::{gpus, uuid};
use crate::state::{Capacity, Command, JobId, Role, TaskPlacement};

fn spec(image: &str) -> pb::JobSpec {
    pb::JobSpec {
        command: vec!["true".into()],
        gpus: 1,
        image: image.into(),
        ..Default::default()
    }
}

async fn submit(p: &Pool, image: &str) -> Result<pb::Job, tonic::Status> {
    let r = p
        .jobs
        .submit_job(req(
            "secret-alice",
            pb::SubmitJobRequest {
                spec: Some(spec(image)),
                array: 0,
                request_id: String::new(),
            },
        ))
        .await?;
    Ok(r.into_inner().job.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_image_name_is_refused_naming_the_field_and_submits_nothing() {
    let p = Pool::start().await;
    p.token("alice", Role::Member, Some("a")).await;
    for bad in ["../etc", ".hidden", "a/b", &"x".repeat(129)] {
        let err = submit(&p, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("invalid image"), "{}", err.message());
    }
    assert_eq!(p.replica.read(|s| s.jobs().count()), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_order_carries_image_data_level_and_the_tenants_uid_offset() {
    let p = Pool::start().await;
    p.token("alice", Role::Member, Some("a")).await;
    p.propose(Command::NodeConnected {
        node: "n1".into(),
        gpus: gpus("n1", 4),
        agent_version: "test".into(),
        images: vec!["pytorch-2.3".into(), "busybox".into()],
        allows_host_jobs: false,
        // Room for the pool's default CPU and memory per GPU.
        cpu_millicores: 1_000_000,
        memory_bytes: 1 << 44,
    })
    .await;
    // A submit may name an image no node has yet: stores change.
    submit(&p, "not-yet-anywhere").await.unwrap();
    let job = submit(&p, "pytorch-2.3").await.unwrap();
    assert_eq!(job.spec.as_ref().unwrap().image, "pytorch-2.3");
    let id: JobId = job.id.parse().unwrap();
    p.propose(Command::PlaceJob {
        job: id,
        tasks: vec![TaskPlacement {
            node: "n1".into(),
            gpus: vec![uuid("n1", 0)],
        }],
        capacity: Capacity::Guaranteed,
    })
    .await;
    let start = p
        .replica
        .read(|s| crate::control::start_message(s, id, "n1"))
        .expect("a start order");
    let Some(pb::scheduler_message::Msg::Start(start)) = start.msg else {
        panic!("{start:?}")
    };
    assert_eq!(start.image, "pytorch-2.3");
    assert_eq!(start.data_level, 0);
    // Tenant a was created first.
    assert_eq!(start.tenant_uid_offset, 1);

    // The node view lists the images (sorted) and the permission, and
    // the tenant view the offset.
    let nodes = p
        .admin
        .list_nodes(req(ADMIN_SECRET, pb::ListNodesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes[0].images, ["busybox", "pytorch-2.3"]);
    assert!(!nodes[0].allows_host_jobs);
    let tenant = p
        .admin
        .get_tenant(req(ADMIN_SECRET, pb::GetTenantRequest { name: "c".into() }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(tenant.uid_offset, 3);
    p.stop().await;
}

fn hello(images: &[&str], allows_host_jobs: bool, memory_bytes: u64) -> pb::AgentHello {
    pb::AgentHello {
        node_name: "n1".into(),
        images: images.iter().map(|i| i.to_string()).collect(),
        allows_host_jobs,
        memory_bytes,
        ..Default::default()
    }
}

#[test]
fn an_agents_image_list_is_bounded_and_checked_name_by_name() {
    let many: Vec<String> = (0..1025).map(|i| format!("img-{i}")).collect();
    let mut h = hello(&[], true, 1 << 30);
    h.images = many;
    assert_eq!(
        convert::software(&h),
        Err(InventoryError::TooManyImages(1025))
    );
    let err = convert::software(&hello(&["ok", "../escape"], true, 1 << 30)).unwrap_err();
    assert_eq!(err, InventoryError::BadImage("../escape".into()));
    assert!(err.to_string().contains("invalid image name '../escape'"));
    assert_eq!(
        convert::software(&hello(&["b", "a", "b"], false, 1 << 30)),
        Ok(Software {
            images: vec!["a".into(), "b".into()],
            allows_host_jobs: false,
        })
    );
}

#[test]
fn an_agent_that_predates_images_is_taken_to_allow_host_jobs() {
    // Nothing of AgentHello 5-8: an agent built before them.
    let old = convert::software(&hello(&[], false, 0)).unwrap();
    assert!(old.allows_host_jobs);
    // One that reports its host but not --allow-host-jobs does not.
    let new = convert::software(&hello(&[], false, 64 << 30)).unwrap();
    assert!(!new.allows_host_jobs);
}
