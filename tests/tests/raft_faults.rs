//! The raft layer's edges against a real `serve` (or `dev`) process: a
//! replica whose raft driver dies exits with an error instead of
//! answering as a zombie, a single-replica pool serves no `RaftService`,
//! and a caller without a replica's certificate is refused before its
//! request is read.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use edupool_proto::v1 as pb;
use edupool_proto::v1::raft_service_client::RaftServiceClient;
use edupool_scheduler::raft::failpoints::DRIVER_PANIC;
use edupool_tests::tls::TestPki;
use edupool_tests::{bin, eventually, Proc, Scheduler};
use edupoolctl::pki::CertKind;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// A TLS channel to `s` that trusts the test's CA and shows `identity`.
async fn channel(s: &Scheduler, identity: Option<(&Path, &Path)>) -> Result<Channel> {
    let ca = std::fs::read(&s.ca_cert)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Endpoint::from_shared(format!("https://{}", s.addr))?
        .tls_config(tls)?
        .timeout(Duration::from_secs(60))
        .connect()
        .await?)
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

/// A raft batch of `bytes` from a caller with no client certificate.
async fn deliver_anonymously(s: &Scheduler, bytes: usize) -> Result<()> {
    RaftServiceClient::new(channel(s, None).await?)
        .max_encoding_message_size(usize::MAX)
        .deliver(pb::RaftBatch {
            from: 2,
            from_address: String::new(),
            messages: vec![vec![7u8; bytes]],
        })
        .await?;
    Ok(())
}

#[test]
fn a_replica_whose_raft_driver_panics_exits_with_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = Scheduler::start(&dir.path().join("scheduler"))?;
    // The replica may still be opening its store (it prints its address
    // first).
    std::fs::create_dir_all(&s.data_dir)?;
    std::fs::write(s.data_dir.join(DRIVER_PANIC), b"")?;
    let status = s.proc.wait_exit(WAIT)?;
    assert!(
        !status.success(),
        "a replica whose driver died must exit non-zero, not linger: {status}"
    );
    // The failpoint fired once: the replica restarts on its data.
    s.restart()?;
    s.ctl_json(edupool_tests::ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    Ok(())
}

#[test]
fn dev_mode_whose_raft_driver_panics_exits_with_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let child = Command::new(bin("edupool-sim"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut dev = Proc::new(child, "dev");
    let store = dir.path().join("scheduler");
    eventually("the dev pool's store", WAIT, || {
        store.join("raft.redb").exists().then_some(())
    })?;
    std::fs::write(store.join(DRIVER_PANIC), b"")?;
    let status = dev.wait_exit(WAIT)?;
    assert!(!status.success(), "dev must exit non-zero: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_pool_serves_no_raft_service() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let pki = TestPki::open(dir.path())?;
    // Not even a replica's own certificate gets an answer from raft.
    let (cert, key) = pki.cert(&CertKind::Peer {
        id: 2,
        hosts: vec!["127.0.0.1".into()],
    })?;
    for identity in [None, Some((cert.as_path(), key.as_path()))] {
        let err = RaftServiceClient::new(channel(&s, identity).await?)
            .deliver(pb::RaftBatch {
                from: 2,
                from_address: String::new(),
                messages: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_raft_request_without_a_peer_certificate_is_refused_unread() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start_in_replica_set(&dir.path().join("scheduler"))?;
    let pid = s.proc.pid();
    // A small call first, so the replica's own start-up and a first TLS
    // connection are behind the baseline.
    s.ctl_json(edupool_tests::ADMIN_TOKEN, &["tenant", "list"])?;
    let _ = deliver_anonymously(&s, 1024).await;
    let before = peak_rss_kib(pid)?;
    const SENT: usize = 96 * 1024 * 1024;
    let err = deliver_anonymously(&s, SENT).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let grew = peak_rss_kib(pid)?.saturating_sub(before);
    eprintln!(
        "peak RSS grew by {grew} KiB for a {} KiB request",
        SENT >> 10
    );
    assert!(
        grew < (SENT as u64 >> 10) / 3,
        "the replica read the refused request: its peak RSS grew by {grew} KiB"
    );
    Ok(())
}
