//! End to end, with the real binaries as processes: a tenant is created,
//! jobs are submitted by `edupoolctl` and by a raw gRPC client, run on an
//! agent as real processes, and end with the right state; bad input is
//! refused; a `kill -9` of the scheduler loses nothing.

use std::time::Duration;

use anyhow::Result;
use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_client::JobServiceClient;
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

fn tenant(s: &Scheduler, name: &str) -> Result<String> {
    let v = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", name])?;
    Ok(v["token"].as_str().expect("a token").to_string())
}

fn job(s: &Scheduler, token: &str, id: &str) -> Value {
    s.ctl_json(token, &["job", "get", id]).expect("job get")
}

fn wait_state(s: &Scheduler, token: &str, id: &str, state: &str) -> Result<Value> {
    eventually(&format!("{id} to be {state}"), WAIT, || {
        let j = job(s, token, id);
        (j["state"] == state).then_some(j)
    })
}

fn wait_nodes_ready(s: &Scheduler, n: usize) -> Result<Value> {
    eventually("agents to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == n).then_some(nodes)
    })
}

async fn grpc(s: &Scheduler) -> JobServiceClient<tonic::transport::Channel> {
    JobServiceClient::new(s.channel().await.expect("connect"))
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_real_processes_and_end_right() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("gpu-node-1", "2xA100-80GB", &dir.path().join("agent"))?;
    let nodes = wait_nodes_ready(&s, 1)?;
    let uuids: Vec<String> = nodes[0]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uuids.len(), 2);

    let zju = tenant(&s, "zju")?;

    // Through the CLI.
    let submitted = s.ctl_json(
        &zju,
        &[
            "job",
            "submit",
            "--gpus",
            "2",
            "--name",
            "hello",
            "--",
            "sh",
            "-c",
            "echo gpus=$CUDA_VISIBLE_DEVICES job=$EDUPOOL_JOB_ID",
        ],
    )?;
    let id = submitted["id"].as_str().unwrap().to_string();
    let done = wait_state(&s, &zju, &id, "succeeded")?;
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["node"], "gpu-node-1");
    let logs = s.ctl(&zju, &["job", "logs", &id]);
    assert!(logs.status.success());
    let logs = String::from_utf8(logs.stdout)?;
    for u in &uuids {
        assert!(logs.contains(u.as_str()), "log {logs:?} names GPU {u}");
    }
    assert!(logs.contains(&format!("job={id}")));

    // A job array: each job runs with its own index.
    let array = s.ctl_json(
        &zju,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--array",
            "2",
            "--",
            "sh",
            "-c",
            "echo index=$EDUPOOL_ARRAY_INDEX of=$EDUPOOL_ARRAY_SIZE",
        ],
    )?;
    let ids = array["array_job_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 2, "{array}");
    for (index, id) in ids.iter().enumerate() {
        let id = id.as_str().unwrap();
        wait_state(&s, &zju, id, "succeeded")?;
        let logs = s.ctl(&zju, &["job", "logs", id]);
        let logs = String::from_utf8(logs.stdout)?;
        assert!(logs.contains(&format!("index={index} of=2")), "{logs:?}");
    }

    // Through a raw gRPC client: a failing command ends Failed with its code.
    let mut client = grpc(&s).await;
    let failing = client
        .submit_job(authed(
            &zju,
            pb::SubmitJobRequest {
                array: 0,
                request_id: String::new(),
                spec: Some(pb::JobSpec {
                    command: vec!["sh".into(), "-c".into(), "exit 7".into()],
                    gpus: 1,
                    ..Default::default()
                }),
            },
        ))
        .await?
        .into_inner()
        .job
        .unwrap();
    let failed = wait_state(&s, &zju, &failing.id, "failed")?;
    assert_eq!(failed["exit_code"], 7);

    // Cancel: SIGTERM to the job, which ends Cancelled.
    let long = s.ctl_json(
        &zju,
        &["job", "submit", "--gpus", "1", "--", "sleep", "300"],
    )?;
    let long_id = long["id"].as_str().unwrap().to_string();
    wait_state(&s, &zju, &long_id, "running")?;
    let out = s.ctl(&zju, &["job", "cancel", &long_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled = wait_state(&s, &zju, &long_id, "cancelled")?;
    assert!(cancelled["exit_code"].is_null(), "ended by a signal");

    // Another tenant sees none of it.
    let hdu = tenant(&s, "hdu")?;
    let err = client
        .get_job(authed(&hdu, pb::GetJobRequest { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .cancel_job(authed(
            &hdu,
            pb::CancelJobRequest {
                id: long_id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_job_logs(authed(
            &hdu,
            pb::GetJobLogsRequest {
                id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed = s.ctl_json(&hdu, &["job", "list"])?;
    assert_eq!(listed.as_array().unwrap().len(), 0);
    let out = s.ctl(&hdu, &["job", "get", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_status_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("gpu-node-1", "4xA100-80GB", &dir.path().join("agent"))?;
    wait_nodes_ready(&s, 1)?;
    let zju = tenant(&s, "zju")?;
    let mut client = grpc(&s).await;
    let spec = |f: &dyn Fn(&mut pb::JobSpec)| {
        let mut s = pb::JobSpec {
            command: vec!["true".into()],
            gpus: 1,
            ..Default::default()
        };
        f(&mut s);
        pb::SubmitJobRequest {
            array: 0,
            request_id: String::new(),
            spec: Some(s),
        }
    };
    let cases: Vec<(pb::SubmitJobRequest, Code, &str)> = vec![
        (
            spec(&|s| s.gpus = 0),
            Code::InvalidArgument,
            "a job with gpus = 0 must ask for CPU",
        ),
        (
            spec(&|s| s.memory_bytes = 1 << 44),
            Code::InvalidArgument,
            "memory_bytes: it asks for 16384 GiB per task, more than any node has; the largest node",
        ),
        (
            spec(&|s| s.gpus = 100_000),
            Code::InvalidArgument,
            "at most 1024",
        ),
        (
            spec(&|s| s.gpus = 5),
            Code::FailedPrecondition,
            "largest node in the pool has 4",
        ),
        (
            spec(&|s| s.command.clear()),
            Code::InvalidArgument,
            "command is empty",
        ),
        (
            spec(&|s| s.class = 42),
            Code::InvalidArgument,
            "unknown job class 42",
        ),
        (
            spec(&|s| s.name = "no spaces please".into()),
            Code::InvalidArgument,
            "invalid job name",
        ),
        (
            pb::SubmitJobRequest {
                array: 0,
                request_id: String::new(),
                spec: None,
            },
            Code::InvalidArgument,
            "spec is missing",
        ),
    ];
    for (req, code, text) in cases {
        let err = client.submit_job(authed(&zju, req)).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().contains(text),
            "{:?} should say {text:?}",
            err.message()
        );
    }
    // Oversize request.
    let huge = spec(&|s| s.command = vec!["x".repeat(2 * 1024 * 1024)]);
    let err = client.submit_job(authed(&zju, huge)).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );
    // Tokens.
    let err = client
        .list_jobs(Request::new(pb::ListJobsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .list_jobs(authed("not-a-token", pb::ListJobsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // A tenant token is no admin token.
    let out = s.ctl(&zju, &["tenant", "create", "evil"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin"));
    let out = s.ctl(ADMIN_TOKEN, &["tenant", "create", "Bad Name"]);
    assert_eq!(out.status.code(), Some(1));
    // The CLI refuses a bad job before sending it.
    let out = s.ctl(
        &zju,
        &[
            "job", "submit", "--gpus", "1", "--class", "urgent", "--", "true",
        ],
    );
    assert_ne!(out.status.code(), Some(0));

    // Nothing of the above changed the pool.
    let jobs = s.ctl_json(ADMIN_TOKEN, &["job", "list"])?;
    assert_eq!(jobs.as_array().unwrap().len(), 0);
    let tenants = s.ctl_json(ADMIN_TOKEN, &["tenant", "list"])?;
    assert_eq!(tenants.as_array().unwrap().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_scheduler_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("gpu-node-1", "2xA100-80GB", &dir.path().join("agent"))?;
    wait_nodes_ready(&s, 1)?;
    let zju = tenant(&s, "zju")?;
    let quick = s.ctl_json(&zju, &["job", "submit", "--gpus", "1", "--", "true"])?;
    let quick = quick["id"].as_str().unwrap().to_string();
    wait_state(&s, &zju, &quick, "succeeded")?;
    // A marker file lets the test end this job when it chooses.
    let marker = dir.path().join("finish");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; echo done",
        marker.display()
    );
    let long = s.ctl_json(
        &zju,
        &["job", "submit", "--gpus", "1", "--", "sh", "-c", &script],
    )?;
    let long = long["id"].as_str().unwrap().to_string();
    wait_state(&s, &zju, &long, "running")?;
    let pending = s.ctl_json(&zju, &["job", "submit", "--gpus", "2", "--", "true"])?;
    let pending = pending["id"].as_str().unwrap().to_string();
    let before = s.ctl_json(ADMIN_TOKEN, &["job", "list"])?;

    s.restart()?;

    // Everything acknowledged is still there, tokens included.
    let after = s.ctl_json(ADMIN_TOKEN, &["job", "list"])?;
    assert_eq!(after.as_array().unwrap().len(), 3);
    for (b, a) in before
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
    {
        assert_eq!(b["id"], a["id"]);
        assert_eq!(b["submitted_at"], a["submitted_at"]);
    }
    assert_eq!(job(&s, &zju, &quick)["state"], "succeeded");
    let tenants = s.ctl_json(ADMIN_TOKEN, &["tenant", "list"])?;
    assert_eq!(tenants[0]["name"], "zju");
    // The agent reconnects; the job that kept running is still running.
    wait_nodes_ready(&s, 1)?;
    assert_eq!(job(&s, &zju, &long)["state"], "running");
    std::fs::write(&marker, b"")?;
    let done = wait_state(&s, &zju, &long, "succeeded")?;
    assert_eq!(done["attempt"], 1, "it ran once, never restarted");
    // The pending job then gets both GPUs.
    wait_state(&s, &zju, &pending, "succeeded")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_job_is_requeued_elsewhere() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start_with(&dir.path().join("scheduler"), "127.0.0.1:0", "2s")?;
    let mut first = s.agent("gpu-node-1", "1xT4-16GB", &dir.path().join("a1"))?;
    wait_nodes_ready(&s, 1)?;
    let zju = tenant(&s, "zju")?;
    let j = s.ctl_json(
        &zju,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--",
            "sh",
            "-c",
            "sleep 2; echo attempt $EDUPOOL_ATTEMPT",
        ],
    )?;
    let id = j["id"].as_str().unwrap().to_string();
    wait_state(&s, &zju, &id, "running")?;
    first.kill9();
    let _second = s.agent("gpu-node-2", "1xT4-16GB", &dir.path().join("a2"))?;
    let done = wait_state(&s, &zju, &id, "succeeded")?;
    assert_eq!(done["node"], "gpu-node-2");
    assert_eq!(done["attempt"], 2);
    let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"])?;
    let lost = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "gpu-node-1")
        .unwrap();
    assert_eq!(lost["status"], "lost");
    Ok(())
}

#[test]
fn the_server_binary_says_where_dev_mode_and_the_simulator_went() -> Result<()> {
    for name in ["dev", "simulate"] {
        let out = std::process::Command::new(edupool_tests::bin("edupool-scheduler"))
            .args([name, "--listen", "127.0.0.1:0"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("is now `edupool-sim {name}`")),
            "{name}: {stderr}"
        );
    }
    Ok(())
}
