//! Clients against failing replicas, with the real binaries: submits
//! retried with one request id make one job each; a leader that cannot
//! commit answers UNAVAILABLE within the caller's deadline; `edupoolctl`
//! goes past a dead endpoint, a dead leader and a paused leader to the
//! replicas that answer.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_client::JobServiceClient;
use edupool_tests::cluster::Cluster;
use edupool_tests::{bin, eventually, tls, Scheduler, ADMIN_TOKEN};
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

fn authed<T>(token: &str, msg: T, deadline: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r.set_timeout(deadline);
    r
}

fn submit_request(name: &str, request_id: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(edupool_tests::load::job(name, "0")),
        array: 0,
        request_id: request_id.into(),
    }
}

fn job_names(endpoints: &str, token: &str) -> Result<Vec<String>> {
    let v = Cluster::ctl_json(endpoints, token, &["job", "list"])?;
    Ok(v.as_array()
        .expect("a list")
        .iter()
        .filter_map(|j| j["name"].as_str().map(str::to_string))
        .collect())
}

/// The finding: 20 submits with a 2 ms deadline, each retried with its
/// request id until it is answered, make exactly 20 jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_retried_with_a_request_id_make_one_job_each() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("n1", "2xA100-80GB", &dir.path().join("agent"))?;
    let v = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = v["token"].as_str().expect("a token").to_string();
    eventually("the node", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes.as_array()?.len() == 1).then_some(())
    })?;
    let mut client = JobServiceClient::new(s.channel().await?);

    let mut ids = Vec::new();
    for n in 0..20 {
        let (name, key) = (format!("tiny-{n}"), format!("req-{n}"));
        let rushed = authed(
            &token,
            submit_request(&name, &key),
            Duration::from_millis(2),
        );
        let first = client.submit_job(rushed).await;
        let mut tries = 0;
        let retried = loop {
            tries += 1;
            assert!(tries < 100, "{key} never answered");
            let again = authed(&token, submit_request(&name, &key), WAIT);
            match client.submit_job(again).await {
                Ok(r) => break r.into_inner().job.expect("a job").id,
                Err(e) if e.code() == Code::Unavailable => continue,
                Err(e) => bail!("retry of {key} failed: {e:?}"),
            }
        };
        if let Ok(r) = first {
            assert_eq!(r.into_inner().job.expect("a job").id, retried);
        }
        ids.push(retried);
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "{ids:?}");
    let jobs = s.ctl_json(&token, &["job", "list"])?;
    assert_eq!(jobs.as_array().expect("a list").len(), 20, "{jobs}");

    // The same request id with another spec is refused, and makes nothing.
    let other = authed(&token, submit_request("other", "req-0"), WAIT);
    let refused = client.submit_job(other).await.expect_err("refused");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("already used for a different submission"),
        "{refused:?}"
    );
    // A malformed request id is refused with what is wrong.
    let bad = authed(&token, submit_request("bad", "no spaces"), WAIT);
    let bad = client.submit_job(bad).await.expect_err("refused");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("request id"), "{bad:?}");
    let jobs = s.ctl_json(&token, &["job", "list"])?;
    assert_eq!(jobs.as_array().expect("a list").len(), 20);
    Ok(())
}

/// Starts a 3-replica cluster with an agent and a tenant; its token.
fn cluster_with_tenant(
    work: &std::path::Path,
    extra: &[&str],
) -> Result<(Cluster, edupool_tests::Proc, String)> {
    let c = Cluster::start(3, extra)?;
    let agent = c.agent("n1", "4xA100-80GB", work)?;
    c.leader(WAIT)?;
    let all = c.endpoints();
    let tenant = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = tenant["token"].as_str().expect("a token").to_string();
    Cluster::wait_for_nodes(&all, 1, WAIT)?;
    Ok((c, agent, token))
}

/// A leader cut off from its peers cannot commit: the submit is answered
/// UNAVAILABLE within the caller's deadline, saying a retry with the same
/// request id is safe; the retry elsewhere makes one job.
#[test]
fn a_leader_that_cannot_commit_answers_within_the_callers_deadline() -> Result<()> {
    let work = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    // A slow raft clock: the cut-off leader notices it lost its quorum
    // only after 2 s, so it still takes the submit and waits on it.
    let (mut c, _agent, token) = cluster_with_tenant(work.path(), &["--raft-tick", "200ms"])?;
    let leader = c.leader(WAIT)?;
    let mut client =
        rt.block_on(async { anyhow::Ok(JobServiceClient::new(c.channel(leader).await?)) })?;
    c.partition(&[leader]);
    let req = authed(
        &token,
        submit_request("cut", "cut-1"),
        Duration::from_millis(1500),
    );
    let answer = rt.block_on(client.submit_job(req));
    let status = answer.expect_err("a cut-off leader cannot commit");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("outcome is unknown"),
        "{status:?}"
    );
    assert!(status.message().contains("same request id"), "{status:?}");

    // The same request again, at the replicas that can commit.
    let others: Vec<String> = c
        .ids()
        .into_iter()
        .filter(|i| *i != leader)
        .map(|i| c.endpoint(i))
        .collect();
    let args = [
        "job",
        "submit",
        "--request-id",
        "cut-1",
        "--gpus",
        "1",
        "--name",
        "cut",
        "--",
        "sleep",
        "0",
    ];
    Cluster::ctl_json(&others.join(","), &token, &args)?;
    c.heal_all()?;
    c.converged(WAIT)?;
    // The cut-off leader's entry was never committed, or is the same job.
    let names = job_names(&c.endpoints(), &token)?;
    assert_eq!(names, ["cut"], "{names:?}");
    Ok(())
}

/// Runs `edupoolctl` like `Cluster::ctl_at`, but fails (and stops it)
/// if it has not ended after `limit`: a hung client is a failure, not a
/// hung test.
fn ctl_within(
    c: Option<&Cluster>,
    endpoints: &str,
    args: &[&str],
    limit: Duration,
) -> Result<Output> {
    let mut ctl = Command::new(bin("edupoolctl"));
    ctl.args(["--endpoint", endpoints, "--output", "json"]);
    // The cluster's CA, whichever endpoint comes first.
    if let Some(ca) = c.and_then(|c| tls::ca_for(&c.endpoints())) {
        ctl.arg("--ca-cert").arg(ca);
    }
    let mut child = ctl
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("edupoolctl {} did not end within {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

fn submit_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = extra.to_vec();
    args.extend(["job", "submit", "--gpus", "1", "--name", name, "--", "true"]);
    args
}

fn succeeded(out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "edupoolctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn ctl_goes_past_a_dead_endpoint_and_a_dead_leader() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (mut c, _agent, token) = cluster_with_tenant(work.path(), &[])?;
    // Nothing listens on a port just bound and dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dead_first = format!("http://{closed},{}", c.endpoints());
    let args = submit_args("past-dead", &["--token", &token]);
    let out = ctl_within(Some(&c), &dead_first, &args, WAIT)?;
    succeeded(&out)?;

    // The leader dies; it is first in the list, and the followers name it
    // until they elect another.
    let leader = c.leader(WAIT)?;
    c.kill9(leader);
    let mut order = vec![c.endpoint(leader)];
    order.extend(
        c.ids()
            .into_iter()
            .filter(|i| *i != leader)
            .map(|i| c.endpoint(i)),
    );
    let args = submit_args("past-dead-leader", &["--token", &token, "--timeout", "40s"]);
    let out = ctl_within(Some(&c), &order.join(","), &args, Duration::from_secs(60))?;
    succeeded(&out)?;
    let mut names = job_names(&order[1..].join(","), &token)?;
    names.sort();
    assert_eq!(names, ["past-dead", "past-dead-leader"]);
    Ok(())
}

#[test]
fn ctl_submit_to_a_paused_leader_lands_once_elsewhere() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (mut c, _agent, token) = cluster_with_tenant(work.path(), &[])?;
    let leader = c.leader(WAIT)?;
    c.pause(leader)?;
    let mut order = vec![c.endpoint(leader)];
    order.extend(
        c.ids()
            .into_iter()
            .filter(|i| *i != leader)
            .map(|i| c.endpoint(i)),
    );
    // Each call may wait 2 s, the command 40 s in all: it must end well
    // within a minute, having left the paused leader for the others.
    let flags = [
        "--token",
        &token,
        "--attempt-timeout",
        "2s",
        "--timeout",
        "40s",
    ];
    let args = submit_args("while-paused", &flags);
    let out = ctl_within(Some(&c), &order.join(","), &args, Duration::from_secs(60))?;
    succeeded(&out)?;
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout)?["id"].clone();

    // The old leader comes back and catches up: still one job.
    c.resume(leader)?;
    c.converged(WAIT)?;
    let names = job_names(&c.endpoints(), &token)?;
    assert_eq!(names, ["while-paused"], "{names:?}");
    let jobs = Cluster::ctl_json(&c.endpoints(), &token, &["job", "list"])?;
    assert_eq!(jobs[0]["id"], id);
    Ok(())
}

#[test]
fn ctl_gives_up_at_its_deadline_naming_every_endpoint() -> Result<()> {
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            anyhow::Ok(format!("http://{addr}"))
        })
        .collect::<Result<_>>()?;
    let args = ["--token", "t", "--timeout", "1s", "job", "list"];
    let out = ctl_within(None, &closed.join(","), &args, WAIT)?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("gave up after"), "{said}");
    for e in &closed {
        assert!(said.contains(e.as_str()), "{said}");
    }
    Ok(())
}
