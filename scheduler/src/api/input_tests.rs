//! Hostile input to the services: what errors echo is bounded, and
//! free-text fields refuse control characters, changing nothing.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use edupool_proto::v1::job_service_server::JobService;
use tonic::Code;

use super::authz_tests::{req, Pool, ADMIN_SECRET};
use crate::state::JobState;

#[tokio::test]
async fn errors_echo_at_most_a_bounded_part_of_the_input() {
    let p = Pool::start().await;
    let huge = "j-".to_string() + &"9".repeat(500 * 1024);
    let err = p
        .jobs
        .get_job(req(ADMIN_SECRET, pb::GetJobRequest { id: huge.clone() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 200, "{} bytes", err.message().len());
    assert!(
        err.message().contains("is not a job id"),
        "{}",
        err.message()
    );
    // A rejection from the state quotes the name it was given.
    let err = p
        .admin
        .set_class_cap(req(
            ADMIN_SECRET,
            pb::SetClassCapRequest {
                tenant: "x".repeat(500 * 1024),
                job_class: pb::JobClass::Batch as i32,
                max_gpus: 1,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().len() <= 1027, "{} bytes", err.message().len());
    p.stop().await;
}

#[tokio::test]
async fn control_characters_in_reasons_are_refused() {
    let p = Pool::start().await;
    let id = p.job("a", "someone").await;
    let err = p
        .jobs
        .cancel_job(req(
            ADMIN_SECRET,
            pb::CancelJobRequest {
                id: id.to_string(),
                reason: "done\n\u{1b}[2Jforged log line".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "reason contains the control character \\u{a}; use printable text on one line"
    );
    let state = p.replica.read(|s| s.job(id).map(|j| j.state));
    assert_eq!(state, Some(JobState::Pending));
    let err = p
        .admin
        .suspend_tenant(req(
            ADMIN_SECRET,
            pb::SuspendTenantRequest {
                tenant: "a".into(),
                reason: "tab\there".into(),
                stop_running: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("reason contains"));
    assert!(p.replica.read(|s| s.suspension("a").is_none()));
    p.stop().await;
}
