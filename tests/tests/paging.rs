//! List paging end to end, with the real binaries: jobs whose command and
//! env make ~128 KB each, more than fit in one 4 MiB reply, are listed
//! whole by `edupoolctl job list` for a tenant and for an admin, newest
//! first; `--limit` gives the newest; a bad page token is refused.

use std::time::Duration;

use anyhow::Result;
use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_client::JobServiceClient;
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A spec of ~128 KB: 60 KB of arguments and 60 KB of environment.
fn big_spec() -> pb::JobSpec {
    let arg = "a".repeat(60 * 1024);
    pb::JobSpec {
        command: vec!["sh".into(), "-c".into(), "sleep 600".into(), arg],
        env: (0..6)
            .map(|i| (format!("DATA_{i}"), "e".repeat(10 * 1024)))
            .collect(),
        gpus: 1,
        ..Default::default()
    }
}

fn small_spec() -> pb::JobSpec {
    pb::JobSpec {
        command: vec!["true".into()],
        gpus: 1,
        ..Default::default()
    }
}

/// Job ids as numbers, in the order listed.
fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .expect("a JSON list")
        .iter()
        .map(|j| {
            let id = j["id"].as_str().expect("an id");
            id.trim_start_matches("j-").parse().expect("a job id")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_job_lists_come_whole_and_newest_first() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("gpu-node-1", "1xA100-80GB", &dir.path().join("agent"))?;
    eventually("the agent to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes.as_array()?.len() == 1).then_some(())
    })?;
    // Nothing runs: the jobs only need to exist.
    s.ctl_json(ADMIN_TOKEN, &["node", "cordon", "gpu-node-1"])?;
    let zju = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "zju"])?["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let hdu = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "hdu"])?["token"]
        .as_str()
        .expect("a token")
        .to_string();

    let mut jobs = JobServiceClient::new(s.channel().await?);
    for (token, spec, array) in [
        (&zju, big_spec(), 40),
        (&hdu, small_spec(), 0),
        (&zju, small_spec(), 70),
    ] {
        let req = pb::SubmitJobRequest {
            spec: Some(spec),
            array,
            request_id: String::new(),
        };
        jobs.submit_job(authed(token, req)).await?;
    }

    // 40 x 128 KB is over 5 MB: the tenant's list takes two pages.
    let mine = ids(&s.ctl_json(&zju, &["job", "list"])?);
    assert_eq!(mine.len(), 110);
    assert!(
        mine.windows(2).all(|w| w[0] > w[1]),
        "newest first: {mine:?}"
    );
    let all = ids(&s.ctl_json(ADMIN_TOKEN, &["job", "list"])?);
    assert_eq!(all.len(), 111);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let newest = ids(&s.ctl_json(&zju, &["job", "list", "--limit", "5"])?);
    assert_eq!(newest, mine[..5]);

    // A list of summaries; the full job is one `job get` away.
    let oldest = format!("j-{}", mine[mine.len() - 1]);
    let full = s.ctl_json(&zju, &["job", "get", &oldest])?;
    assert_eq!(full["command"].as_array().map(Vec::len), Some(4));

    let bad = pb::ListJobsRequest {
        page_token: "bm90LWEtdG9rZW4".into(),
        ..Default::default()
    };
    let err = jobs.list_jobs(authed(&zju, bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("page_token is not one this scheduler gave out"),
        "{}",
        err.message()
    );
    Ok(())
}
