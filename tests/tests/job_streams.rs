//! The long-lived job streams, against real binaries: `WatchJobs` gives a
//! tenant every change to its own jobs and nobody else's, resumes from a
//! revision on a new stream, and says OUT_OF_RANGE for a revision from
//! before a restart; `FollowJobLogs` streams a log until the job ended;
//! open streams are limited per tenant.

use std::time::Duration;

use anyhow::Result;
use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_client::JobServiceClient;
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const WAIT: Duration = Duration::from_secs(30);

fn tenant(s: &Scheduler, name: &str) -> Result<String> {
    let v = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", name])?;
    Ok(v["token"].as_str().expect("a token").to_string())
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A client once the scheduler's agent is connected.
async fn started(s: &Scheduler) -> Result<JobServiceClient<Channel>> {
    eventually("the agent to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes.as_array()?.iter().any(|n| n["status"] == "ready")).then_some(())
    })?;
    Ok(JobServiceClient::new(s.channel().await?))
}

async fn submit(c: &mut JobServiceClient<Channel>, token: &str, command: &str) -> Result<String> {
    let spec = pb::JobSpec {
        command: vec!["sh".into(), "-c".into(), command.into()],
        gpus: 1,
        ..Default::default()
    };
    let r = c
        .submit_job(authed(
            token,
            pb::SubmitJobRequest {
                spec: Some(spec),
                ..Default::default()
            },
        ))
        .await?;
    Ok(r.into_inner().job.expect("a job").id)
}

async fn watch(
    c: &mut JobServiceClient<Channel>,
    token: &str,
    start_revision: u64,
) -> Result<Streaming<pb::WatchJobsEvent>, tonic::Status> {
    Ok(
        c.watch_jobs(authed(token, pb::WatchJobsRequest { start_revision }))
            .await?
            .into_inner(),
    )
}

/// Events until `job` is seen succeeded.
async fn until_done(
    events: &mut Streaming<pb::WatchJobsEvent>,
    job: &str,
) -> Result<Vec<(u64, String, i32)>> {
    let mut got = vec![];
    tokio::time::timeout(WAIT, async {
        while let Some(e) = events.message().await? {
            let j = e.job.expect("a change carries its job");
            got.push((e.revision, j.id.clone(), j.state));
            if j.id == job && j.state == pb::JobState::Succeeded as i32 {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the stream ended before {job} succeeded")
    })
    .await??;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_jobs_sends_a_tenants_changes_and_resumes_from_a_revision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("node-1", "2xA100-80GB", &dir.path().join("agent"))?;
    let mut c = started(&s).await?;
    let zju = tenant(&s, "zju")?;
    let other = tenant(&s, "other")?;

    let mut events = watch(&mut c, &zju, 0).await?;
    let opening = events.message().await?.expect("an opening event");
    assert!(opening.job.is_none() && opening.revision > 0);
    let theirs = submit(&mut c, &other, "true").await?;
    let mine = submit(&mut c, &zju, "true").await?;
    let got = until_done(&mut events, &mine).await?;
    assert!(
        got.iter().all(|(_, id, _)| *id == mine),
        "{got:?} shows {theirs}"
    );
    let states: Vec<i32> = got.iter().map(|g| g.2).collect();
    assert_eq!(states.first(), Some(&(pb::JobState::Pending as i32)));
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{got:?}");

    // A new stream from the opening revision + 1 gives the same changes.
    let mut again = watch(&mut c, &zju, opening.revision + 1).await?;
    assert_eq!(until_done(&mut again, &mine).await?, got);

    // After a restart the replica's history starts again: an old revision
    // is refused with what to do instead.
    drop((events, again));
    s.restart()?;
    let mut c = JobServiceClient::new(s.channel().await?);
    let err = watch(&mut c, &zju, opening.revision + 1)
        .await
        .expect_err("a revision from before the restart");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("re-list the jobs"),
        "{}",
        err.message()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_job_logs_streams_output_until_the_job_ends() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("node-1", "1xA100-80GB", &dir.path().join("agent"))?;
    let mut c = started(&s).await?;
    let zju = tenant(&s, "zju")?;
    let id = submit(
        &mut c,
        &zju,
        "for i in 1 2 3; do echo line $i; sleep 0.3; done",
    )
    .await?;
    let mut stream = c
        .follow_job_logs(authed(
            &zju,
            pb::FollowJobLogsRequest {
                id: id.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let mut out = vec![];
    let mut last = None;
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = stream.message().await? {
            out.extend_from_slice(&chunk.data);
            last = Some(chunk);
        }
        anyhow::Ok(())
    })
    .await??;
    assert_eq!(String::from_utf8_lossy(&out), "line 1\nline 2\nline 3\n");
    assert!(
        last.is_some_and(|c| c.complete),
        "the last message says complete"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_limited_per_tenant() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let mut c = JobServiceClient::new(s.channel().await?);
    let zju = tenant(&s, "zju")?;
    let other = tenant(&s, "other")?;
    let limit = edupool_scheduler::api::streams::MAX_STREAMS_PER_TENANT;
    let mut open = vec![];
    for _ in 0..limit {
        open.push(watch(&mut c, &zju, 0).await?);
    }
    let err = watch(&mut c, &zju, 0).await.expect_err("one too many");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("close one"), "{}", err.message());
    // Another tenant is not held back by it.
    watch(&mut c, &other, 0).await?;
    // A closed stream frees its place.
    open.pop();
    let mut freed = false;
    for _ in 0..100 {
        if watch(&mut c, &zju, 0).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a closed stream's place was never freed");
    Ok(())
}
