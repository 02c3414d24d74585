//! The whole agent (`edupool_agent::run`) against a fake scheduler on a
//! loopback port: hello, orders, reports, logs, reconnection and shutdown.
//! Every wait has a deadline; nothing sleeps a fixed time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edupool_agent::inventory::{simulated_gpu_uuid, SimulatedInventory};
use edupool_agent::AgentConfig;
use edupool_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use edupool_proto::v1::{
    agent_message, scheduler_message, AgentHello, AgentMessage, ForgetJob, JobReport, LogChunk,
    LogRequest, LogStream, SchedulerMessage, StartJob, StopJob, Welcome,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "agent-token-123";

/// One session the agent opened.
struct Connection {
    authorization: Option<String>,
    inbound: Streaming<AgentMessage>,
    outbound: mpsc::UnboundedSender<Result<SchedulerMessage, Status>>,
}

struct FakeScheduler {
    sessions: mpsc::UnboundedSender<Connection>,
    /// Sessions still to refuse with UNAUTHENTICATED.
    refuse: AtomicUsize,
}

#[tonic::async_trait]
impl AgentService for FakeScheduler {
    type SessionStream = UnboundedReceiverStream<Result<SchedulerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unauthenticated("unknown agent token"));
        }
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (outbound, rx) = mpsc::unbounded_channel();
        let connection = Connection {
            authorization,
            inbound: request.into_inner(),
            outbound,
        };
        self.sessions
            .send(connection)
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

impl Connection {
    fn send(&self, msg: scheduler_message::Msg) {
        self.outbound
            .send(Ok(SchedulerMessage { msg: Some(msg) }))
            .expect("the session is open");
    }

    /// The next message other than a heartbeat or a telemetry summary.
    async fn next(&mut self) -> agent_message::Msg {
        within("a message from the agent", async {
            loop {
                let message = self
                    .inbound
                    .message()
                    .await
                    .expect("the stream is healthy")
                    .expect("the agent keeps the session open");
                match message.msg.expect("a message has a body") {
                    agent_message::Msg::Heartbeat(_) | agent_message::Msg::Telemetry(_) => {}
                    msg => return msg,
                }
            }
        })
        .await
    }

    async fn hello(&mut self) -> AgentHello {
        match self.next().await {
            agent_message::Msg::Hello(hello) => hello,
            other => panic!("expected the hello first, got {other:?}"),
        }
    }

    /// The next report of `job_id` that shows it exited.
    async fn exit_of(&mut self, job_id: &str) -> JobReport {
        loop {
            if let agent_message::Msg::Job(report) = self.next().await {
                if report.job_id == job_id && !report.running {
                    return report;
                }
            }
        }
    }

    async fn log_chunk(&mut self, request_id: u64) -> LogChunk {
        loop {
            if let agent_message::Msg::Log(chunk) = self.next().await {
                if chunk.request_id == request_id {
                    return chunk;
                }
            }
        }
    }
}

async fn start_fake_scheduler(
    refuse: usize,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Connection>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sessions, rx) = mpsc::unbounded_channel();
    let service = AgentServiceServer::new(FakeScheduler {
        sessions,
        refuse: AtomicUsize::new(refuse),
    });
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
                .await
                .unwrap();
        }
    });
    (addr, rx, stop, server)
}

/// An address nothing listens on.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn start(job_id: &str, script: &str, gpus: &[String]) -> scheduler_message::Msg {
    scheduler_message::Msg::Start(StartJob {
        job_id: job_id.into(),
        tenant: "uni-a".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        gpu_uuids: gpus.to_vec(),
        grace_period_seconds: 1,
        attempt: 1,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_the_scheduler_across_reconnections() {
    let (addr, mut sessions, server_stop, server) = start_fake_scheduler(1).await;
    let work_dir = tempfile::tempdir().unwrap();
    let inventory = SimulatedInventory::parse("node-7", "2xA100-80GB").unwrap();
    let mut config = AgentConfig::new(
        "node-7",
        // The first endpoint is down: the agent moves on to the next.
        vec![format!("http://{}", dead_address().await), addr.to_string()],
        TOKEN,
        work_dir.path(),
        Arc::new(inventory),
    );
    config.reconnect_min = Duration::from_millis(10);
    config.reconnect_max = Duration::from_millis(100);
    // The test may run as root; its jobs are harmless shell one-liners,
    // run as host processes.
    config.allow_root = true;
    config.allow_host_jobs = true;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(edupool_agent::run(config, shutdown.clone()));
    let gpus = vec![
        simulated_gpu_uuid("node-7", 0),
        simulated_gpu_uuid("node-7", 1),
    ];

    // Session 1 (the first attempt on the live endpoint was refused).
    let mut s1 = within("the first session", sessions.recv()).await.unwrap();
    assert_eq!(s1.authorization.as_deref(), Some("Bearer agent-token-123"));
    let hello = s1.hello().await;
    assert_eq!(hello.node_name, "node-7");
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(hello.jobs.is_empty());
    assert_eq!(
        hello
            .gpus
            .iter()
            .map(|g| (
                g.index,
                g.uuid.clone(),
                g.model.as_str(),
                g.memory_bytes,
                g.healthy
            ))
            .collect::<Vec<_>>(),
        [
            (0, gpus[0].clone(), "A100-80GB", 80 << 30, true),
            (1, gpus[1].clone(), "A100-80GB", 80 << 30, true),
        ]
    );
    s1.send(scheduler_message::Msg::Welcome(Welcome {
        scheduler_id: "sched-1".into(),
        heartbeat_interval_ms: 100,
    }));
    within("a heartbeat", async {
        loop {
            let msg = s1.inbound.message().await.unwrap().unwrap();
            if let Some(agent_message::Msg::Heartbeat(beat)) = msg.msg {
                assert!(beat.at_ms > 0);
                break;
            }
        }
    })
    .await;

    s1.send(start(
        "j1",
        r#"echo "$CUDA_VISIBLE_DEVICES"; echo err >&2; exit 7"#,
        &gpus,
    ));
    match s1.next().await {
        agent_message::Msg::Job(report) => {
            // Either the start report, or already the exit.
            assert_eq!(report.job_id, "j1");
            assert!(report.started_at_ms > 0);
        }
        other => panic!("expected a job report, got {other:?}"),
    }
    let j1 = s1.exit_of("j1").await;
    assert!(j1.has_exit_code);
    assert_eq!((j1.exit_code, j1.signal), (7, 0));
    assert_eq!(j1.reason, "exited with code 7");

    s1.send(scheduler_message::Msg::LogRequest(LogRequest {
        request_id: 42,
        job_id: "j1".into(),
        stream: LogStream::Stdout as i32,
        offset: 0,
        max_bytes: 0,
    }));
    let chunk = s1.log_chunk(42).await;
    assert_eq!(chunk.error, "");
    assert_eq!(chunk.data, format!("{}\n", gpus.join(",")).into_bytes());
    assert!(chunk.eof);
    assert_eq!(chunk.next_offset, chunk.data.len() as u64);
    s1.send(scheduler_message::Msg::LogRequest(LogRequest {
        request_id: 43,
        job_id: "nope".into(),
        stream: LogStream::Stderr as i32,
        ..Default::default()
    }));
    assert_eq!(
        s1.log_chunk(43).await.error,
        "no stderr log for job nope on this node"
    );

    s1.send(start("j2", "exec sleep 30", &gpus[..1]));
    loop {
        if let agent_message::Msg::Job(report) = s1.next().await {
            if report.job_id == "j2" && report.running {
                break;
            }
        }
    }

    // The scheduler goes away; the agent comes back, and its hello holds the
    // unforgotten exit of j1 and the still-running j2.
    drop(s1);
    let mut s2 = within("the second session", sessions.recv()).await.unwrap();
    let hello = s2.hello().await;
    let jobs: Vec<(&str, bool, i32)> = hello
        .jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.running, j.exit_code))
        .collect();
    assert_eq!(jobs, [("j1", false, 7), ("j2", true, 0)]);

    // A repeated start order for a held job starts nothing: it is reported again.
    s2.send(start("j2", "exit 1", &gpus[..1]));
    match s2.next().await {
        agent_message::Msg::Job(report) => assert!(report.job_id == "j2" && report.running),
        other => panic!("expected j2's report, got {other:?}"),
    }

    s2.send(scheduler_message::Msg::Forget(ForgetJob {
        job_id: "j1".into(),
    }));
    s2.send(scheduler_message::Msg::Stop(StopJob {
        job_id: "j2".into(),
        grace_period_seconds: 5,
        reason: "cancelled".into(),
    }));
    let j2 = s2.exit_of("j2").await;
    assert!(!j2.has_exit_code);
    assert_eq!(j2.signal, 15);
    assert_eq!(j2.reason, "cancelled");

    // Session 3: j1 is forgotten, j2's exit is held until it is.
    drop(s2);
    let mut s3 = within("the third session", sessions.recv()).await.unwrap();
    let hello = s3.hello().await;
    let jobs: Vec<(&str, bool, i32)> = hello
        .jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.running, j.signal))
        .collect();
    assert_eq!(jobs, [("j2", false, 15)]);

    // Shutdown stops the running job and reports its exit before leaving.
    s3.send(start("j3", "exec sleep 30", &[]));
    loop {
        if let agent_message::Msg::Job(report) = s3.next().await {
            if report.job_id == "j3" && report.running {
                break;
            }
        }
    }
    shutdown.cancel();
    let j3 = s3.exit_of("j3").await;
    assert_eq!((j3.signal, j3.reason.as_str()), (15, "agent shutting down"));
    within("the agent to close its side", async {
        while let Ok(Some(_)) = s3.inbound.message().await {}
    })
    .await;
    drop(s3);
    within("the agent to stop", agent)
        .await
        .expect("the agent task did not panic")
        .expect("the agent ran without error");

    server_stop.cancel();
    within("the fake scheduler to stop", server).await.unwrap();
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_anything_runs() {
    let work_dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::new(
        "node-1",
        vec![],
        TOKEN,
        work_dir.path(),
        Arc::new(SimulatedInventory::parse("node-1", "1xT4-16GB").unwrap()),
    );
    let err = edupool_agent::run(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid agent configuration");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "no scheduler endpoint given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_gpu_health_usage_and_telemetry() {
    let (addr, mut sessions, server_stop, server) = start_fake_scheduler(0).await;
    let work_dir = tempfile::tempdir().unwrap();
    let faults = work_dir.path().join("faults");
    let inventory = SimulatedInventory::parse("node-h", "2xA100-80GB")
        .unwrap()
        .with_fault_file(&faults);
    let mut config = AgentConfig::new(
        "node-h",
        vec![addr.to_string()],
        TOKEN,
        work_dir.path().join("work"),
        Arc::new(inventory),
    );
    config.telemetry_interval = Duration::from_millis(100);
    config.allow_root = true;
    config.allow_host_jobs = true;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(edupool_agent::run(config, shutdown.clone()));
    let gpus = vec![
        simulated_gpu_uuid("node-h", 0),
        simulated_gpu_uuid("node-h", 1),
    ];

    let mut s = within("a session", sessions.recv()).await.unwrap();
    let hello = s.hello().await;
    assert_eq!(
        hello.gpus[0].nvlink_peers,
        [hello.gpus[1].pci_bus_id.clone()]
    );
    assert_eq!(hello.gpus[0].compute_capability, "8.0");
    s.send(scheduler_message::Msg::Welcome(Welcome {
        scheduler_id: "sched-1".into(),
        heartbeat_interval_ms: 100,
    }));

    // A summary of both GPUs' telemetry comes after each round.
    let summary = within("a telemetry summary", async {
        loop {
            let msg = s.inbound.message().await.unwrap().unwrap();
            if let Some(agent_message::Msg::Telemetry(summary)) = msg.msg {
                break summary;
            }
        }
    })
    .await;
    assert_eq!(
        summary
            .gpus
            .iter()
            .map(|g| g.gpu_uuid.clone())
            .collect::<Vec<_>>(),
        gpus
    );
    assert!(summary
        .gpus
        .iter()
        .all(|g| g.power_watts >= 60.0 && g.at_ms > 0));

    // An exit carries the run's GPU time and energy.
    s.send(start("j1", "sleep 0.2", &gpus));
    let j1 = s.exit_of("j1").await;
    assert!(j1.gpu_seconds >= 0.3, "{j1:?}");
    // The counters are read once the job is under way and again after its
    // exit, so the energy covers most of its run, never more than all of it.
    assert!(
        j1.energy_joules > 0.0 && j1.energy_joules <= 2.0 * 400.0 * j1.gpu_seconds,
        "{j1:?}"
    );

    // A fatal XID is reported at once; a reset makes the GPU healthy again.
    std::fs::write(&faults, "1 xid 79\n").unwrap();
    let health = loop {
        if let agent_message::Msg::GpuHealth(h) = s.next().await {
            break h;
        }
    };
    assert_eq!(
        (
            health.gpu_uuid.as_str(),
            health.healthy,
            health.reason.as_str()
        ),
        (
            gpus[1].as_str(),
            false,
            "XID 79: GPU has fallen off the bus"
        )
    );
    std::fs::write(&faults, "1 xid 79\n1 reset\n").unwrap();
    let health = loop {
        if let agent_message::Msg::GpuHealth(h) = s.next().await {
            break h;
        }
    };
    assert_eq!(
        (
            health.gpu_uuid.as_str(),
            health.healthy,
            health.reason.as_str()
        ),
        (gpus[1].as_str(), true, "")
    );

    shutdown.cancel();
    within("the agent to close its side", async {
        while let Ok(Some(_)) = s.inbound.message().await {}
    })
    .await;
    drop(s);
    within("the agent to stop", agent).await.unwrap().unwrap();
    server_stop.cancel();
    within("the fake scheduler to stop", server).await.unwrap();
}
