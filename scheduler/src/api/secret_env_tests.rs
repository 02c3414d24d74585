//! Secret environment values: accepted on submit, never shown by a read,
//! and given to the agent in the start order.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use edupool_proto::v1::job_service_server::JobService;
use tokio_stream::StreamExt;
use tonic::Code;

use super::authz_tests::{req, Pool, ADMIN_SECRET};
use crate::state::tests_support::uuid;
use crate::state::{Capacity, Command, JobId, Role, TaskPlacement};

const VALUE: &str = "s3cr3t-value-9f2c";

fn spec_with_secret() -> pb::JobSpec {
    pb::JobSpec {
        command: vec!["true".into()],
        gpus: 1,
        env: [("PLAIN".to_string(), "shown".to_string())].into(),
        secret_env: [("API_KEY".to_string(), VALUE.to_string())].into(),
        ..Default::default()
    }
}

/// Fails when `what` shows the secret value anywhere.
fn assert_hidden(what: &str, shown: impl std::fmt::Debug) {
    let text = format!("{shown:?}");
    assert!(!text.contains(VALUE), "{what} shows the secret: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_reach_the_start_order_and_no_read() {
    let p = Pool::start().await;
    p.token("alice", Role::Member, Some("a")).await;
    p.token("audit", Role::Auditor, None).await;
    let submitted = p
        .jobs
        .submit_job(req(
            "secret-alice",
            pb::SubmitJobRequest {
                spec: Some(spec_with_secret()),
                array: 0,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_hidden("SubmitJob", &submitted);
    let job = submitted.job.unwrap();
    let spec = job.spec.clone().unwrap();
    assert_eq!(
        spec.secret_env.get("API_KEY").map(String::as_str),
        Some("***")
    );
    assert_eq!(spec.env.get("PLAIN").map(String::as_str), Some("shown"));
    let id = job.id.clone();

    for secret in ["secret-alice", "secret-audit", ADMIN_SECRET] {
        let got = p
            .jobs
            .get_job(req(secret, pb::GetJobRequest { id: id.clone() }))
            .await
            .unwrap();
        assert_hidden("GetJob", got.get_ref());
        let got_spec = got.into_inner().job.unwrap().spec.unwrap();
        assert_eq!(got_spec.secret_env.len(), 1);
        let list = p
            .jobs
            .list_jobs(req(secret, pb::ListJobsRequest::default()))
            .await
            .unwrap();
        assert_eq!(list.get_ref().jobs.len(), 1);
        assert_hidden("ListJobs", list.get_ref());
        let explain = p
            .jobs
            .explain_job(req(secret, pb::ExplainJobRequest { id: id.clone() }))
            .await
            .unwrap();
        assert_hidden("ExplainJob", explain.get_ref());
        let mut watch = p
            .jobs
            .watch_job(req(secret, pb::WatchJobRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        let event = watch.next().await.expect("a first event").unwrap();
        assert_eq!(event.job.as_ref().unwrap().id, id);
        assert_hidden("WatchJob", &event);
    }
    let audit = p
        .admin
        .list_audit(req(ADMIN_SECRET, pb::ListAuditRequest::default()))
        .await
        .unwrap();
    assert!(audit
        .get_ref()
        .records
        .iter()
        .any(|r| r.action == "job.submit"));
    assert_hidden("ListAudit", audit.get_ref());
    let export = p
        .admin
        .export_audit(req(ADMIN_SECRET, pb::ExportAuditRequest::default()))
        .await
        .unwrap();
    assert_hidden("ExportAudit", export.get_ref());
    p.replica
        .read(|s| assert_hidden("the audit trail", s.audit().collect::<Vec<_>>()));

    // Placed, the start order the agent receives carries the value.
    let jid: JobId = id.parse().unwrap();
    p.propose(Command::PlaceJob {
        job: jid,
        tasks: vec![TaskPlacement {
            node: "n1".into(),
            gpus: vec![uuid("n1", 0)],
        }],
        capacity: Capacity::Guaranteed,
    })
    .await;
    let start = p
        .replica
        .read(|s| crate::control::start_message(s, jid, "n1"))
        .expect("a start order");
    let Some(pb::scheduler_message::Msg::Start(start)) = start.msg else {
        panic!("{start:?}")
    };
    assert_eq!(start.env.get("API_KEY").map(String::as_str), Some(VALUE));
    assert_eq!(start.env.get("PLAIN").map(String::as_str), Some("shown"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_both_env_and_secret_env_is_refused_and_submits_nothing() {
    let p = Pool::start().await;
    p.token("alice", Role::Member, Some("a")).await;
    let mut spec = spec_with_secret();
    spec.env.insert("API_KEY".into(), "plain".into());
    let err = p
        .jobs
        .submit_job(req(
            "secret-alice",
            pb::SubmitJobRequest {
                spec: Some(spec),
                array: 0,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("API_KEY") && err.message().contains("both"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains(VALUE));
    assert_eq!(p.replica.read(|s| s.jobs().count()), 0);
    p.stop().await;
}

#[test]
fn a_logged_spec_shows_no_value_and_a_stored_one_keeps_it() {
    let limits = super::convert::JobLimits::default();
    let spec = super::convert::job_spec(Some(spec_with_secret()), &limits).unwrap();
    assert_eq!(
        spec.secret_env.0.get("API_KEY").map(String::as_str),
        Some(VALUE)
    );
    assert_hidden("a spec's Debug", &spec);
    // Positional, as a binary snapshot stores it, and back.
    let bytes = rmp_serde::to_vec(&spec).unwrap();
    let back: crate::state::JobSpec = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, spec);
}
