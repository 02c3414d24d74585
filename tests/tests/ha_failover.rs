//! Three scheduler replicas as processes: followers point writers to the
//! leader, reads are linearizable or (with --stale-ok) local, killing the
//! leader loses nothing that was acknowledged, an agent's session
//! outlives a report that waits for a quorum, and an agent that knows only
//! a follower follows its hint to the leader over TLS.

use std::time::Duration;

use anyhow::{Context, Result};
use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_client::JobServiceClient;
use edupool_tests::cluster::Cluster;
use edupool_tests::prometheus::http_get;
use edupool_tests::{agent_with, eventually, simulated_agent, ADMIN_TOKEN};

const WAIT: Duration = Duration::from_secs(30);

fn submit(endpoints: &str, token: &str, name: &str) -> Result<String> {
    let v = Cluster::ctl_json(
        endpoints,
        token,
        &["job", "submit", "--gpus", "1", "--name", name, "--", "true"],
    )?;
    Ok(v["id"].as_str().expect("a job id").to_string())
}

fn job_names(endpoints: &str, token: &str, extra: &[&str]) -> Result<Vec<String>> {
    let mut args = extra.to_vec();
    args.extend(["job", "list"]);
    let v = Cluster::ctl_json(endpoints, token, &args)?;
    Ok(v.as_array()
        .expect("a list")
        .iter()
        .filter_map(|j| j["name"].as_str().map(str::to_string))
        .collect())
}

#[test]
fn followers_name_the_leader_and_a_leader_kill_loses_nothing() -> Result<()> {
    let mut c = Cluster::start(3, &[])?;
    let work = tempfile::tempdir()?;
    let _agent = c.agent("n1", "4xA100-80GB", work.path())?;
    let leader = c.leader(WAIT)?;
    let all = c.endpoints();
    let tenant = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = tenant["token"].as_str().expect("a token").to_string();
    Cluster::wait_for_nodes(&all, 1, WAIT)?;

    // A follower refuses a write with the leader's address in metadata.
    let follower = *c.ids().iter().find(|i| **i != leader).expect("a follower");
    let rt = tokio::runtime::Runtime::new()?;
    let refused = rt.block_on(async {
        let mut client = JobServiceClient::new(c.channel(follower).await?);
        let mut req = tonic::Request::new(pb::SubmitJobRequest {
            array: 0,
            request_id: String::new(),
            spec: Some(edupool_tests::load::job("direct", "0")),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        anyhow::Ok(
            client
                .submit_job(req)
                .await
                .expect_err("a follower refuses"),
        )
    })?;
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let hint = refused
        .metadata()
        .get("x-edupool-leader")
        .expect("a leader hint");
    assert_eq!(
        hint.to_str()?,
        c.links[&(follower, leader)].addr.to_string(),
        "the follower names the leader as it reaches it"
    );

    // edupoolctl pointed at the follower alone follows it to the leader.
    submit(&c.endpoint(follower), &token, "first")?;
    // A linearizable read on a follower sees the write at once; a stale one
    // sees it too once the follower has applied it.
    let names = job_names(&c.endpoint(follower), &token, &[])?;
    assert!(names.contains(&"first".to_string()), "{names:?}");
    eventually("a stale read to catch up", WAIT, || {
        job_names(&c.endpoint(follower), &token, &["--stale-ok"])
            .ok()?
            .contains(&"first".to_string())
            .then_some(())
    })?;

    // Kill -9 the leader: another takes over, writes go on, nothing is lost.
    c.kill9(leader);
    let new = c.leader(WAIT)?;
    assert_ne!(new, leader);
    let second = eventually("a write to the new leader", WAIT, || {
        submit(&all, &token, "second").ok()
    })?;
    // The agent followed the leader: the new leader places the job and
    // the agent runs it to the end.
    eventually("the job submitted after failover to succeed", WAIT, || {
        let v = Cluster::ctl_json(&all, &token, &["job", "get", &second]).ok()?;
        (v["state"] == "succeeded").then_some(())
    })?;
    let names = job_names(&all, &token, &[])?;
    for n in ["first", "second"] {
        assert_eq!(
            names.iter().filter(|x| *x == n).count(),
            1,
            "{n} once: {names:?}"
        );
    }
    // The old leader comes back as a follower and converges.
    c.restart(leader)?;
    c.converged(WAIT)?;
    let status = c.status(leader)?;
    assert_eq!(status["leader_id"].as_u64(), Some(new));
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    Ok(())
}

/// An agent's report that cannot commit (both followers paused, so the
/// leader has no quorum) does not stop its session from reading: the
/// heartbeats behind the report keep the session open, the agent never
/// has to reconnect, and the report commits once the followers are back.
#[test]
fn an_agent_session_outlives_a_report_waiting_to_commit() -> Result<()> {
    // Elections after 5-10 s of silence, so the leader keeps leading
    // through a pause of 2.5 s; sessions are closed after three missed
    // heartbeats of 200 ms (the harness's), which a session that waited
    // for the commit before reading on would miss.
    let mut c = Cluster::start(3, &["--raft-tick", "500ms"])?;
    let work = tempfile::tempdir()?;
    let all = c.endpoints();
    let serve = ["--metrics-listen", "127.0.0.1:0"];
    let (_agent, metrics) = agent_with(&all, "n1", "1xA100-80GB", work.path(), &serve)?;
    let metrics = metrics.context("the agent serves metrics")?;
    let leader = c.leader(WAIT)?;
    let tenant = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = tenant["token"].as_str().expect("a token").to_string();
    Cluster::wait_for_nodes(&all, 1, WAIT)?;
    let submitted = Cluster::ctl_json(
        &all,
        &token,
        &[
            "job", "submit", "--gpus", "1", "--name", "slow", "--", "sleep", "1",
        ],
    )?;
    let job = submitted["id"].as_str().expect("a job id").to_string();
    eventually("the job to run", WAIT, || {
        let v = Cluster::ctl_json(&all, &token, &["job", "get", &job]).ok()?;
        (v["state"] == "running").then_some(())
    })?;

    // The job exits about a second into the pause; its report waits for a
    // quorum for the rest of it. The pause is the fault itself, not a wait
    // for something to happen.
    let followers: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    for &f in &followers {
        c.pause(f)?;
    }
    std::thread::sleep(Duration::from_millis(2_500));
    for &f in &followers {
        c.resume(f)?;
    }

    eventually("the exit to commit", WAIT, || {
        let v = Cluster::ctl_json(&all, &token, &["job", "get", &job]).ok()?;
        (v["state"] == "succeeded").then_some(())
    })?;
    assert_eq!(c.leader(WAIT)?, leader, "the leader kept leading");
    // A job placed now reaches the agent only through a session the
    // leader holds: had the pause closed the session, the agent would have
    // had to reconnect to run it.
    let after = submit(&all, &token, "after")?;
    eventually("the job after the pause to succeed", WAIT, || {
        let v = Cluster::ctl_json(&all, &token, &["job", "get", &after]).ok()?;
        (v["state"] == "succeeded").then_some(())
    })?;
    let (_, body) = http_get(metrics, "/metrics")?;
    let text = String::from_utf8(body)?;
    assert!(
        text.lines()
            .any(|l| l == r#"edupool_agent_sessions_established_total{node="n1"} 1"#),
        "the agent kept its one session:\n{text}"
    );
    Ok(())
}

#[test]
fn an_agent_told_only_of_a_follower_reaches_the_leader_over_tls() -> Result<()> {
    let c = Cluster::start(3, &[])?;
    let leader = c.leader(WAIT)?;
    let follower = *c.ids().iter().find(|i| **i != leader).expect("a follower");
    let work = tempfile::tempdir()?;
    // The follower is the agent's only endpoint: the one way to the leader
    // is the address the follower's refusal names, reached over mTLS.
    let _agent = simulated_agent(
        &c.endpoint(follower),
        "n1",
        "1xA100-80GB",
        work.path(),
        "error",
    )?;
    let all = c.endpoints();
    eventually("the agent's node to be ready", WAIT, || {
        let v = Cluster::ctl_json(&all, ADMIN_TOKEN, &["node", "list"]).ok()?;
        let node = v.as_array()?.first()?.clone();
        (node["status"].as_str()? == "ready").then_some(())
    })
    .context("an agent pointed at a follower should end up in a session with the leader")?;
    Ok(())
}
