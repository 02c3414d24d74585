//! The client and the binary against an in-process stand-in for the
//! scheduler's public services: endpoint fallback, the bearer token, log
//! following, watching, and how errors read on stderr.

use std::{
    net::SocketAddr,
    pin::Pin,
    process::Output,
    sync::{Arc, Mutex},
    time::Duration,
};

use edupool_proto::v1::{
    self as pb,
    admin_service_server::{AdminService, AdminServiceServer},
    job_service_server::{JobService, JobServiceServer},
    CancelJobRequest, CancelJobResponse, CreateTenantRequest, CreateTenantResponse,
    GetJobLogsRequest, GetJobLogsResponse, GetJobRequest, GetJobResponse, Job, JobEvent, JobState,
    ListJobsRequest, ListJobsResponse, ListNodesRequest, ListNodesResponse, ListTenantsRequest,
    ListTenantsResponse, LogStream, NodeRequest, NodeResponse, SubmitJobRequest, SubmitJobResponse,
    Tenant, WatchJobRequest,
};
use edupoolctl::{
    client,
    commands::{Ctl, JobFilter},
    output::OutputFormat,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_stream::{wrappers::TcpListenerStream, Stream};
use tonic::{transport::Server, Request, Response, Status};

const TOKEN: &str = "t0ken";
/// The whole stdout log, revealed a third at a time.
const LOG: &[u8] = b"epoch 1 loss 0.9\nepoch 2 loss 0.5\nepoch 3 loss 0.2\n";

#[derive(Default)]
struct Seen {
    log_available: usize,
}

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Seen>>,
}

fn check_token<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("authorization") {
        Some(v) if v == format!("Bearer {TOKEN}").as_str() => Ok(()),
        Some(_) => Err(Status::unauthenticated("unknown token")),
        None => Err(Status::unauthenticated("no token given")),
    }
}

fn job(id: &str, state: JobState) -> Job {
    let mut job = Job {
        id: id.into(),
        tenant: "physics".into(),
        node: if state == JobState::Pending {
            String::new()
        } else {
            "gpu-01".into()
        },
        submitted_at_ms: 1_735_689_600_000,
        attempt: 1,
        ..Job::default()
    };
    if state == JobState::Succeeded {
        job.has_exit_code = true;
        job.reason = "exited with code 0".into();
    }
    job.set_state(state);
    job
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type Unserved<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Mock {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        check_token(&request)?;
        let spec = request.into_inner().spec.unwrap_or_default();
        if spec.gpus > 8 {
            return Err(Status::invalid_argument(format!(
                "job asks for {} GPUs but the largest node has 8",
                spec.gpus
            )));
        }
        let mut job = job("j-42", JobState::Pending);
        job.spec = Some(spec);
        Ok(Response::new(SubmitJobResponse {
            job: Some(job),
            array_job_ids: vec![],
        }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        check_token(&request)?;
        let id = request.into_inner().id;
        if id != "j-42" {
            return Err(Status::not_found(format!("no job {id}")));
        }
        Ok(Response::new(GetJobResponse {
            job: Some(job("j-42", JobState::Running)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let jobs = [job("j-1", JobState::Pending), job("j-2", JobState::Running)]
            .into_iter()
            .filter(|j| request.states.is_empty() || request.states.contains(&j.state))
            .collect();
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token: String::new(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        check_token(&request)?;
        let mut job = job(&request.into_inner().id, JobState::Cancelling);
        job.reason = "cancelled by user".into();
        Ok(Response::new(CancelJobResponse { job: Some(job) }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        check_token(&request)?;
        let id = request.into_inner().id;
        let events = [JobState::Pending, JobState::Running, JobState::Succeeded].map(|state| {
            Ok(JobEvent {
                job: Some(job(&id, state)),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    type WatchJobsStream = Unserved<edupool_proto::v1::WatchJobsEvent>;

    async fn watch_jobs(
        &self,
        _: Request<edupool_proto::v1::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        Err(Status::unimplemented("the mock serves no WatchJobs"))
    }

    type FollowJobLogsStream = Unserved<GetJobLogsResponse>;

    async fn follow_job_logs(
        &self,
        _: Request<edupool_proto::v1::FollowJobLogsRequest>,
    ) -> Result<Response<Self::FollowJobLogsStream>, Status> {
        Err(Status::unimplemented("the mock serves no FollowJobLogs"))
    }

    async fn get_job_logs(
        &self,
        request: Request<GetJobLogsRequest>,
    ) -> Result<Response<GetJobLogsResponse>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        if request.stream() == LogStream::Stderr {
            return Ok(Response::new(GetJobLogsResponse {
                eof: true,
                complete: true,
                ..GetJobLogsResponse::default()
            }));
        }
        // The job has written a third of its log; each time a reader has
        // caught up it writes another third, and is done after the last.
        let available = {
            let mut seen = self.seen.lock().unwrap();
            let third = LOG.len() / 3;
            if seen.log_available == 0 {
                seen.log_available = third;
            } else if request.offset >= seen.log_available as u64 {
                seen.log_available = (seen.log_available + third).min(LOG.len());
            }
            seen.log_available
        };
        // Chunks of at most 7 bytes, so reading takes several calls.
        let from = usize::try_from(request.offset).unwrap().min(available);
        let to = (from + 7).min(available);
        Ok(Response::new(GetJobLogsResponse {
            data: LOG[from..to].to_vec(),
            next_offset: to as u64,
            eof: to == available,
            complete: to == LOG.len(),
        }))
    }

    async fn explain_job(
        &self,
        _: Request<pb::ExplainJobRequest>,
    ) -> Result<Response<pb::ExplainJobResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tonic::async_trait]
impl AdminService for Mock {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        check_token(&request)?;
        Ok(Response::new(CreateTenantResponse {
            tenant: Some(Tenant {
                name: request.into_inner().name,
                created_at_ms: 1_735_689_600_000,
                ..Tenant::default()
            }),
            token: "secret-token-shown-once".into(),
        }))
    }

    async fn list_tenants(
        &self,
        _: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        Err(Status::permission_denied("admins only"))
    }

    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse::default()))
    }

    async fn cordon_node(&self, _: Request<NodeRequest>) -> Result<Response<NodeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn uncordon_node(
        &self,
        _: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn drain_node(&self, _: Request<NodeRequest>) -> Result<Response<NodeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn label_node(
        &self,
        _: Request<pb::LabelNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn set_tenant_quota(
        &self,
        _: Request<pb::SetTenantQuotaRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn set_tenant_share(
        &self,
        _: Request<pb::SetTenantShareRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn set_class_cap(
        &self,
        _: Request<pb::SetClassCapRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_tenant(
        &self,
        _: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn clear_gpu(
        &self,
        _: Request<edupool_proto::v1::ClearGpuRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn create_token(
        &self,
        _: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn suspend_tenant(
        &self,
        _: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::TenantStatus>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn resume_tenant(
        &self,
        _: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::TenantStatus>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_audit(
        &self,
        _: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn export_audit(
        &self,
        _: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_refused_calls(
        &self,
        _: Request<pb::ListRefusedCallsRequest>,
    ) -> Result<Response<pb::ListRefusedCallsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn start() -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mock = Mock::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .add_service(JobServiceServer::new(mock.clone()))
                .add_service(AdminServiceServer::new(mock))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// An address nothing listens on (bound, then released).
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

async fn ctl(server: &Running, format: OutputFormat) -> Ctl<Vec<u8>> {
    let endpoints = [dead_endpoint(), server.addr.to_string()];
    let clients = client::connect(&endpoints, Some(TOKEN)).await.unwrap();
    assert_eq!(clients.endpoint, format!("http://{}", server.addr));
    let mut ctl = Ctl::new(clients, format, Vec::new());
    ctl.log_poll_interval = Duration::from_millis(10);
    ctl
}

fn text(ctl: &mut Ctl<Vec<u8>>) -> String {
    String::from_utf8(std::mem::take(&mut ctl.out)).unwrap()
}

#[tokio::test]
async fn library_commands_against_the_stand_in() {
    let server = Running::start().await;
    let mut ctl = ctl(&server, OutputFormat::Table).await;

    let spec = edupoolctl::jobfile::JobFile::new(vec!["true".into()], 1)
        .to_spec()
        .unwrap();
    let job = ctl.submit_job(spec, 0, "").await.unwrap();
    assert_eq!(job.id, "j-42");
    assert_eq!(text(&mut ctl), "submitted job j-42 (pending)\n");

    ctl.list_jobs(JobFilter {
        states: vec![JobState::Running],
        ..JobFilter::default()
    })
    .await
    .unwrap();
    let listed = text(&mut ctl);
    assert!(listed.starts_with("ID "), "{listed}");
    assert!(
        listed.contains("j-2 ") && !listed.contains("j-1 "),
        "{listed}"
    );

    // Without --follow: only what exists now.
    let written = ctl
        .job_logs("j-42", LogStream::Stdout, false)
        .await
        .unwrap();
    assert_eq!(written, LOG.len() as u64 / 3);
    // With --follow: everything, in order, once, until complete.
    let written = ctl.job_logs("j-42", LogStream::Stdout, true).await.unwrap();
    assert_eq!(written, LOG.len() as u64);
    let out = std::mem::take(&mut ctl.out);
    assert_eq!(&out[..LOG.len() / 3], &LOG[..LOG.len() / 3]);
    assert_eq!(&out[LOG.len() / 3..], LOG);

    let last = ctl.watch_job("j-42").await.unwrap().unwrap();
    assert_eq!(last.state(), JobState::Succeeded);
    assert_eq!(
        text(&mut ctl),
        "pending    node=-\n\
         running    node=gpu-01\n\
         succeeded  node=gpu-01 exit=0 reason: exited with code 0\n"
    );

    ctl.format = OutputFormat::Json;
    ctl.watch_job("j-7").await.unwrap();
    let lines = text(&mut ctl);
    let states: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].to_string())
        .collect();
    assert_eq!(states, ["\"pending\"", "\"running\"", "\"succeeded\""]);

    let err = ctl.get_job("j-9").await.unwrap_err();
    assert_eq!(err.to_string(), "no job j-9 (not found)");

    server.shutdown().await;
}

async fn edupoolctl(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_edupoolctl"))
        .args(args)
        .env_remove("EDUPOOL_ENDPOINT")
        .env_remove("EDUPOOL_TOKEN")
        .output()
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[tokio::test]
async fn binary_prints_results_and_one_line_errors() {
    let server = Running::start().await;
    let endpoints = format!("{},{}", dead_endpoint(), server.addr);
    let base = ["--endpoint", endpoints.as_str(), "--token", TOKEN];
    let with = |rest: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(rest.iter().copied()).collect()
    };

    let out = edupoolctl(&with(&[
        "job", "submit", "--gpus", "2", "--", "python3", "x.py",
    ]))
    .await;
    assert_eq!(stdout(&out), "submitted job j-42 (pending)\n");
    assert_eq!(out.status.code(), Some(0));

    let out = edupoolctl(&with(&[
        "-o", "json", "job", "submit", "--gpus", "2", "--", "a",
    ]))
    .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["id"], "j-42");
    assert_eq!(json["state"], "pending");
    assert_eq!(json["gpus"], 2);

    let out = edupoolctl(&with(&["job", "submit", "--gpus", "9", "--", "a"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: job asks for 9 GPUs but the largest node has 8 (invalid argument)\n"
    );

    let out = edupoolctl(&with(&["job", "logs", "j-42", "--follow"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, LOG);

    let out = edupoolctl(&with(&["job", "cancel", "j-42", "--reason", "wrong data"])).await;
    assert_eq!(stdout(&out), "job j-42 is cancelling\n");

    let out = edupoolctl(&with(&["tenant", "create", "physics"])).await;
    let printed = stdout(&out);
    assert!(
        printed.contains("token: secret-token-shown-once\n"),
        "{printed}"
    );
    assert!(printed.contains("stores only its hash"), "{printed}");

    let out = edupoolctl(&with(&["tenant", "list"])).await;
    assert_eq!(stderr(&out), "error: admins only (permission denied)\n");

    let out = edupoolctl(&with(&["node", "list"])).await;
    assert_eq!(stdout(&out), "no nodes\n");

    // No token: the hint says how to give one.
    let out = edupoolctl(&["--endpoint", &endpoints, "job", "get", "j-42"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: no token given (unauthenticated); give a token with --token or EDUPOOL_TOKEN\n"
    );

    // Nothing listening anywhere: retried until --timeout, then every
    // endpoint tried is named with what it answered.
    let dead = dead_endpoint();
    let out = edupoolctl(&["--endpoint", &dead, "--timeout", "1s", "node", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: gave up after "), "{err}");
    assert!(
        err.contains(&format!("(--timeout); tried http://{dead} (")),
        "{err}"
    );
    assert!(err.contains("tries): tcp connect error"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A bad job file is reported before connecting, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, "command: [a]\ngpus: 1\ngpu_modle: A100\n").unwrap();
    let out = edupoolctl(&[
        "--endpoint",
        &dead,
        "job",
        "submit",
        "-f",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: job file {}: unknown field `gpu_modle`",
            file.display()
        )),
        "{err}"
    );

    // Usage errors are clap's, with exit code 2.
    let out = edupoolctl(&["job", "submit", "--gpus", "1"]).await;
    assert_eq!(out.status.code(), Some(2));

    server.shutdown().await;
}
