//! Transport security against a real `serve` process: every listener
//! speaks TLS, agents and raft peers authenticate with certificates from
//! the alliance's CA, and a certificate speaks only for what it names.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use edupool_proto::v1 as pb;
use edupool_proto::v1::agent_service_client::AgentServiceClient;
use edupool_proto::v1::raft_service_client::RaftServiceClient;
use edupool_tests::tls::TestPki;
use edupool_tests::{bin, eventually, Scheduler, ADMIN_TOKEN, AGENT_TOKEN};
use edupoolctl::pki::{Ca, CertKind, Validity};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

/// A TLS channel to `s` that trusts `ca` and shows `identity` (cert, key).
async fn channel(s: &Scheduler, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Endpoint::from_shared(format!("https://{}", s.addr))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// Opens an agent session that says it is `node`; the scheduler's answer.
async fn hello_as(channel: Channel, node: &str) -> Result<(), tonic::Status> {
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::AgentHello {
            node_name: node.to_string(),
            gpus: vec![],
            jobs: vec![],
            agent_version: "impostor".into(),
            ..Default::default()
        })),
    };
    let mut request = Request::new(tokio_stream::iter(vec![hello]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
    );
    AgentServiceClient::new(channel)
        .session(request)
        .await
        .map(|_| ())
}

/// Sends an (empty) raft batch that says it comes from replica `from`.
async fn deliver_as(channel: Channel, from: u64) -> Result<(), tonic::Status> {
    RaftServiceClient::new(channel)
        .deliver(pb::RaftBatch {
            from,
            from_address: String::new(),
            messages: vec![],
        })
        .await
        .map(|_| ())
}

fn ctl(s: &Scheduler, ca: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("edupoolctl"));
    cmd.args(["--endpoint", &s.addr.to_string(), "--output", "json"])
        .env("EDUPOOL_TOKEN", ADMIN_TOKEN)
        .env_remove("EDUPOOL_CA_CERT");
    if let Some(ca) = ca {
        cmd.arg("--ca-cert").arg(ca);
    }
    cmd.args(args).output().expect("edupoolctl runs")
}

fn node_status(s: &Scheduler, node: &str) -> Option<String> {
    let nodes: Value = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["name"] == node)
        .map(|n| n["status"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_alliance_ca_or_with_bad_certificates_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let pki = TestPki::open(dir.path())?;

    // A client that trusts the CA gets in (with its token).
    let ok = ctl(&s, Some(&pki.ca_cert()), &["tenant", "list"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Plaintext to the TLS listener: refused.
    let plain = ctl(&s, None, &["tenant", "list"]);
    assert!(!plain.status.success(), "plaintext must be refused");
    let plain = pb::job_service_client::JobServiceClient::connect(format!("http://{}", s.addr));
    let answered = match plain.await {
        Err(_) => false,
        Ok(mut raw) => raw.list_jobs(pb::ListJobsRequest::default()).await.is_ok(),
    };
    assert!(!answered, "a plaintext gRPC call must not be answered");

    // A client that trusts another CA does not accept the scheduler.
    let other = tempfile::tempdir()?;
    let stranger = Ca::generate("some other CA", Validity::days(1))?;
    stranger.write(other.path(), false)?;
    let wrong = ctl(&s, Some(&other.path().join("ca.pem")), &["tenant", "list"]);
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("cannot reach the scheduler"), "{said}");

    // An agent certificate from another CA: the handshake fails.
    let [cert, key] = stranger
        .issue(&CertKind::Node("n1".into()), Validity::days(1))?
        .write(other.path(), "node-n1", false)?;
    let refused = match channel(&s, &pki.ca_cert(), Some((&cert, &key))).await {
        Err(_) => true,
        Ok(ch) => hello_as(ch, "n1").await.is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");

    // An expired node certificate from the right CA: refused too.
    let (cert, key) = pki.issue_as(
        &CertKind::Node("n1".into()),
        Validity::expired(),
        "node-n1-expired",
    )?;
    let refused = match channel(&s, &pki.ca_cert(), Some((&cert, &key))).await {
        Err(_) => true,
        Ok(ch) => hello_as(ch, "n1").await.is_err(),
    };
    assert!(refused, "an expired certificate must be refused");

    // No client certificate at all: TLS works, the agent session does not.
    let anonymous = channel(&s, &pki.ca_cert(), None).await?;
    let err = hello_as(anonymous, "n1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // The scheduler serves on: nothing above changed its state.
    assert_eq!(
        s.ctl_json(ADMIN_TOKEN, &["node", "list"])?,
        Value::Array(vec![])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_speaks_only_for_its_own_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let pki = TestPki::open(dir.path())?;
    let work = dir.path().join("agent-b");
    let _b = s.agent("node-b", "1xA100-80GB", &work)?;
    eventually("node-b to connect", WAIT, || {
        (node_status(&s, "node-b")? == "ready").then_some(())
    })?;
    // A job for node-b, running there.
    let tenant = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = tenant["token"].as_str().unwrap_or_default().to_string();
    let job = s.ctl_json(
        &token,
        &["job", "submit", "--gpus", "1", "--", "sleep", "60"],
    )?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    eventually("the job to run on node-b", WAIT, || {
        let j = s.ctl_json(&token, &["job", "get", &id]).ok()?;
        (j["state"] == "running").then_some(())
    })?;

    // node-a's certificate cannot open node-b's session: no reports for
    // node-b, and none of node-b's orders (its jobs) reach it.
    let (cert, key) = pki.cert(&CertKind::Node("node-a".into()))?;
    let a = channel(&s, &pki.ca_cert(), Some((&cert, &key))).await?;
    let err = hello_as(a.clone(), "node-b").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("\"node-a\"") && err.message().contains("\"node-b\""),
        "{}",
        err.message()
    );
    // A replica's certificate is no agent's either.
    let (cert, key) = pki.cert(&CertKind::Peer {
        id: 2,
        hosts: vec!["127.0.0.1".into()],
    })?;
    let peer = channel(&s, &pki.ca_cert(), Some((&cert, &key))).await?;
    let err = hello_as(peer, "node-b").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // node-b's own session and job were not disturbed.
    assert_eq!(node_status(&s, "node-b").as_deref(), Some("ready"));
    let j = s.ctl_json(&token, &["job", "get", &id])?;
    assert_eq!(j["state"], "running", "{j}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_needs_the_senders_peer_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A replica set (a single replica serves no RaftService at all).
    let s = Scheduler::start_in_replica_set(&dir.path().join("scheduler"))?;
    let pki = TestPki::open(dir.path())?;

    let anonymous = channel(&s, &pki.ca_cert(), None).await?;
    let err = deliver_as(anonymous, 2).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let (cert, key) = pki.cert(&CertKind::Node("n1".into()))?;
    let node = channel(&s, &pki.ca_cert(), Some((&cert, &key))).await?;
    let err = deliver_as(node, 2).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let (cert, key) = pki.cert(&CertKind::Peer {
        id: 2,
        hosts: vec!["127.0.0.1".into()],
    })?;
    let peer2 = channel(&s, &pki.ca_cert(), Some((&cert, &key))).await?;
    let err = deliver_as(peer2.clone(), 3).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Replica 2's certificate carries replica 2's (here empty) batch.
    deliver_as(peer2, 2).await?;
    Ok(())
}

#[test]
fn serve_without_tls_refuses_to_start_and_says_which_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(bin("edupool-scheduler"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("scheduler"))
        .env("EDUPOOL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .env_remove("EDUPOOL_CA_CERT")
        .env_remove("EDUPOOL_CERT")
        .env_remove("EDUPOOL_KEY")
        .output()?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("serve needs TLS: pass --ca-cert FILE --cert FILE --key FILE"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
    Ok(())
}

#[test]
fn an_agent_refuses_plaintext_to_a_remote_scheduler() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(bin("edupool-agent"))
        .args([
            "run",
            "--scheduler",
            "http://192.0.2.1:7070",
            "--node-name",
            "n1",
        ])
        .args(["--simulate-gpus", "1xT4-16GB", "--allow-root", "--work-dir"])
        .arg(dir.path())
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .env_remove("EDUPOOL_CA_CERT")
        .output()?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("refusing plaintext"), "{said}");
    Ok(())
}

#[test]
fn pki_commands_write_private_keys_and_certificates_that_name_their_holder() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let run = |args: &[&str]| {
        let out = Command::new(bin("edupoolctl"))
            .args(["--output", "json", "pki"])
            .args(args)
            .arg("--dir")
            .arg(&pki)
            .output()
            .expect("edupoolctl runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON")
    };
    run(&["init"]);
    let node = run(&["issue-node", "gpu-01", "--days", "30"]);
    run(&["issue-peer", "2", "--ip", "127.0.0.1", "--dns", "sched-2"]);
    run(&["issue-server", "--dns", "sched.example"]);
    let mode = |f: &str| -> u32 {
        std::fs::metadata(pki.join(f))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    for key in [
        "ca-key.pem",
        "node-gpu-01-key.pem",
        "peer-2-key.pem",
        "server-key.pem",
    ] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    assert_eq!(
        node["key"],
        pki.join("node-gpu-01-key.pem").display().to_string()
    );
    // The CA is not overwritten by accident.
    let again = Command::new(bin("edupoolctl"))
        .args(["pki", "init", "--dir"])
        .arg(&pki)
        .output()?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    Ok(())
}
