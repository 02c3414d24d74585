//! `JobService`: what tenants call. Every call is scoped to the caller's
//! tenant; another tenant's job is reported as not found, never revealed.

use std::pin::Pin;
use std::time::Duration;

use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_server::JobService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::changes::ChangeLog;
use super::convert::{self, JobLimits};
use super::streams::{self, StreamLimits};
use super::{deadline, paging, status, Auth, Caller, Rpc};
use crate::raft::Replica;
use crate::sessions::Sessions;
use crate::state::{check_request_id, Command, Effect, Job, JobId, Outcome, MAX_ARRAY};

const DEFAULT_LOG_CHUNK: u32 = 64 * 1024;
const MAX_LOG_CHUNK: u32 = 1024 * 1024;
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Jobs {
    pub replica: Replica,
    pub auth: Auth,
    pub sessions: Sessions,
    pub limits: JobLimits,
    /// Watch streams run here, so shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// The recent job changes `WatchJobs` serves.
    pub changes: ChangeLog,
    /// Open watch and log streams per tenant.
    pub streams: StreamLimits,
}

impl Jobs {
    /// The job if the caller may see it; NOT_FOUND otherwise.
    fn visible_job(&self, caller: &Caller, id: &str) -> Result<Job, Status> {
        let id: JobId = convert::job_id(id)?;
        self.replica
            .read(|s| s.job(id).cloned())
            .filter(|j| caller.sees_tenant(&j.tenant))
            .ok_or_else(|| Status::not_found(format!("job {id} does not exist")))
    }

    /// Refuses a submit of `count` jobs that would put the tenant above
    /// its pending-job limit. Counted on this replica's state before
    /// proposing, so concurrent submits may pass the limit by as many as
    /// are in flight.
    fn check_pending_limit(&self, tenant: &str, count: u32) -> Result<(), Status> {
        let max = self.limits.max_pending_per_tenant as usize;
        let pending = self.replica.read(|s| s.queues().pending_of(tenant));
        if pending + count as usize > max {
            let more = if count > 1 {
                format!(
                    ", and an array of {count} would make {}",
                    pending + count as usize
                )
            } else {
                String::new()
            };
            return Err(Status::resource_exhausted(format!(
                "tenant '{tenant}' already has {pending} pending jobs{more}; one tenant may have at most {max}; wait for some to start or cancel some"
            )));
        }
        Ok(())
    }

    /// A member controls only the jobs it submitted; the tenant's other
    /// jobs need a tenant-admin. (Another tenant's job is left to the
    /// state, which reports it as absent.)
    async fn check_member_owns(&self, caller: &Caller, job: JobId) -> Result<(), Status> {
        if caller.role != crate::state::Role::Member {
            return Ok(());
        }
        let (same_tenant, owner) = self.replica.read(|s| {
            (
                s.job(job).is_some_and(|j| caller.sees_tenant(&j.tenant)),
                s.job_owner(job).map(str::to_string),
            )
        });
        if same_tenant && owner.as_deref() != Some(caller.token_id.as_str()) {
            let why = format!(
                "job {job} was submitted by another member of the tenant; controlling it needs the tenant-admin role"
            );
            return Err(self
                .auth
                .deny(caller, Rpc::CancelJob, &job.to_string(), why)
                .await);
        }
        Ok(())
    }

    /// Whether this replica remembers the tenant's request id (a retry).
    fn seen_request(&self, tenant: &str, request_id: Option<&str>) -> bool {
        let Some(id) = request_id else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.replica
            .read(|s| s.seen_request(tenant, id, now).is_some())
    }

    /// The job a submission created (the state just named it); a retry may
    /// name one since archived, which is answered by its id alone.
    fn submitted_job(&self, id: JobId) -> Result<pb::Job, Status> {
        let job = self.replica.read(|s| s.job(id).map(convert::job));
        Ok(job.unwrap_or_else(|| pb::Job {
            id: id.to_string(),
            ..Default::default()
        }))
    }

    /// Up to `max_bytes` (0: the default) of `job`'s log from `offset`,
    /// from the node its first task ran on (a gang's log is its first
    /// task's); nothing while it never ran.
    async fn read_log(
        &self,
        job: &Job,
        stream: i32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<pb::GetJobLogsResponse, Status> {
        let complete = job.state.is_final();
        let Some(node) = job.tasks.first().map(|t| t.node.clone()) else {
            return Ok(pb::GetJobLogsResponse {
                data: vec![],
                next_offset: offset,
                eof: true,
                complete,
            });
        };
        let max_bytes = match max_bytes {
            0 => DEFAULT_LOG_CHUNK,
            n => n.min(MAX_LOG_CHUNK),
        };
        let chunk = self
            .sessions
            .read_log(
                &node,
                pb::LogRequest {
                    request_id: 0,
                    job_id: job.id.to_string(),
                    stream,
                    offset,
                    max_bytes,
                },
                LOG_TIMEOUT,
            )
            .await
            .map_err(|e| {
                Status::unavailable(format!("{e}; the job's logs are kept on that node"))
            })?;
        if !chunk.error.is_empty() {
            return Err(Status::not_found(format!(
                "node '{node}' could not read the log of {}: {}",
                job.id, chunk.error
            )));
        }
        Ok(pb::GetJobLogsResponse {
            data: chunk.data,
            next_offset: chunk.next_offset,
            eof: chunk.eof,
            complete,
        })
    }

    /// `FollowJobLogs`: sends the log from `offset` as it grows, until the
    /// job has ended and its log was read to the end. The job's state is
    /// read before each chunk, so a chunk at the end of a finished job's
    /// log is really the last.
    async fn follow_logs(
        &self,
        id: JobId,
        stream: i32,
        mut offset: u64,
        tx: streams::Sender<pb::GetJobLogsResponse>,
    ) {
        loop {
            let Some(job) = self.replica.read(|s| s.job(id).cloned()) else {
                tx.fail(Status::not_found(format!(
                    "job {id} was archived while its log was followed"
                )))
                .await;
                return;
            };
            let chunk = match self.read_log(&job, stream, offset, 0).await {
                Ok(c) => c,
                // Placed but not started yet: the node has no log so far.
                Err(e) if e.code() == tonic::Code::NotFound && !job.state.is_final() => {
                    pb::GetJobLogsResponse {
                        next_offset: offset,
                        eof: true,
                        ..Default::default()
                    }
                }
                Err(e) => return tx.fail(e).await,
            };
            let done = chunk.complete && (chunk.eof || chunk.data.is_empty());
            let idle = chunk.data.is_empty() || chunk.eof;
            offset = chunk.next_offset.max(offset + chunk.data.len() as u64);
            if (!chunk.data.is_empty() || done) && tx.send(chunk).await.is_err() {
                return;
            }
            if done {
                return;
            }
            if idle {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(streams::LOG_POLL) => {}
                }
            }
        }
    }

    fn job_reply(&self, id: JobId) -> Result<pb::Job, Status> {
        self.replica
            .read(|s| s.job(id).map(convert::job))
            .ok_or_else(|| Status::internal(format!("job {id} vanished after it was written")))
    }
}

/// UNAVAILABLE for a submission not committed within `waited`: it may
/// still commit, so whether a retry is safe depends on the request id.
fn not_committed(waited: Duration, request_id: Option<&str>) -> Status {
    let retry = match request_id {
        Some(id) => format!("retrying with the same request id ({id}) is safe: it will not create a second job"),
        None => "a retry may create a second job; send a request id to make retries safe, or list your jobs before retrying".into(),
    };
    Status::unavailable(format!(
        "the submission was not committed within {} ms (the leader may be cut off from its peers or overloaded); its outcome is unknown: {retry}",
        waited.as_millis()
    ))
}

type JobEvents = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::SubmitJob).await?;
        let tenant = caller
            .tenant_scope()
            .ok_or_else(|| Status::internal("a tenant role without a tenant"))?
            .to_string();
        let wait = deadline::commit_wait(req.metadata());
        let req = req.into_inner();
        let request_id = (!req.request_id.is_empty()).then_some(req.request_id);
        if let Some(id) = &request_id {
            check_request_id(id).map_err(Status::invalid_argument)?;
        }
        let spec = convert::job_spec(req.spec, &self.limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A GPU kind no node has, or a task larger than the largest node,
        // is bad input: refused before anything is written.
        self.replica
            .read(|s| s.check_request(&spec))
            .map_err(|e| Status::invalid_argument(convert::bounded_message(e)))?;
        if req.array > MAX_ARRAY {
            return Err(Status::invalid_argument(format!(
                "an array of {} jobs is more than one submission may hold ({MAX_ARRAY}); submit it in parts",
                req.array
            )));
        }
        // A retry of a submission already made creates nothing more.
        if !self.seen_request(&tenant, request_id.as_deref()) {
            self.check_pending_limit(&tenant, req.array.max(1))?;
        }
        let cmd = match req.array {
            0 => Command::SubmitJob { tenant, spec },
            count => Command::SubmitArray {
                tenant,
                spec,
                count,
            },
        };
        let mut cmd = caller.audited(Rpc::SubmitJob, "", cmd);
        if let Some(request_id) = request_id.clone() {
            cmd = Command::SubmitOnce {
                request_id,
                cmd: Box::new(cmd),
            };
        }
        let out = deadline::within(wait, self.replica.propose(cmd))
            .await
            .ok_or_else(|| not_committed(wait, request_id.as_deref()))?
            .map_err(status)?;
        let (first, ids) = match out {
            Outcome::Job(id) => (id, vec![]),
            Outcome::Jobs { first, count } => {
                let ids = (first.0..first.0 + u64::from(count)).map(|i| JobId(i).to_string());
                (first, ids.collect())
            }
            _ => return Err(Status::internal("submission produced no job")),
        };
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(self.submitted_job(first)?),
            array_job_ids: ids,
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::GetJob).await?;
        super::read_barrier(&self.replica, &req).await?;
        let job = self.visible_job(&caller, &req.get_ref().id)?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(convert::job(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::ListJobs).await?;
        let scope = caller.tenant_scope().map(str::to_string);
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let tenant = match (scope, r.tenant.is_empty()) {
            (Some(own), true) => Some(own),
            (Some(own), false) if own == r.tenant => Some(own),
            (Some(_), false) => {
                return Err(Status::permission_denied(
                    "a tenant's token can list only its own tenant's jobs",
                ))
            }
            (None, true) => None,
            (None, false) => Some(r.tenant),
        };
        let mut states = Vec::with_capacity(r.states.len());
        for s in &r.states {
            states.push(
                convert::parse_job_state(*s)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown job state {s}")))?,
            );
        }
        let size = if r.page_size == 0 {
            r.limit
        } else {
            r.page_size
        };
        let page = paging::request::<JobId>("jobs", paging::SMALL, size, &r.page_token)?;
        let view = match pb::JobView::try_from(r.view) {
            Ok(pb::JobView::Full) => convert::job,
            Ok(pb::JobView::Unspecified | pb::JobView::Summary) => convert::job_summary,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown job view {}; use summary or full",
                    r.view
                )))
            }
        };
        let (jobs, next_page_token) = self.replica.read(|s| {
            let matching = s
                .jobs_newest_first(page.after)
                .filter(|j| tenant.as_deref().is_none_or(|t| j.tenant == t))
                .filter(|j| states.is_empty() || states.contains(&j.state))
                .map(|j| (j.id, view(j)));
            paging::cut("jobs", page.size, matching)
        });
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let target = req.get_ref().id.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::CancelJob, &target)
            .await?;
        let tenant = caller.tenant_scope().map(str::to_string);
        let r = req.into_inner();
        let job: JobId = convert::job_id(&r.id)?;
        convert::free_text("reason", &r.reason, 1024)?;
        self.check_member_owns(&caller, job).await?;
        self.replica
            .propose(caller.audited(
                Rpc::CancelJob,
                job.to_string(),
                Command::CancelJob {
                    tenant,
                    job,
                    reason: r.reason,
                },
            ))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(self.job_reply(job)?),
        }))
    }

    type WatchJobStream = JobEvents;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<JobEvents>, Status> {
        let caller = self.auth.authorize(&req, Rpc::WatchJob).await?;
        // Subscribe before reading, so no change falls between the two.
        let mut changes = self.replica.subscribe();
        let job = self.visible_job(&caller, &req.get_ref().id)?;
        let id = job.id;
        let (tx, rx) = mpsc::channel(16);
        let replica = self.replica.clone();
        self.tasks.spawn(async move {
            let mut last = convert::job(&job);
            if tx
                .send(Ok(pb::JobEvent {
                    job: Some(last.clone()),
                }))
                .await
                .is_err()
            {
                return;
            }
            while !job_is_final(&last) {
                let next = tokio::select! {
                    _ = tx.closed() => break,
                    next = changes.recv() => next,
                };
                let changed = match next {
                    Ok(effects) => effects.contains(&Effect::JobChanged(id)),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if !changed {
                    continue;
                }
                let Some(now) = replica.read(|s| s.job(id).map(convert::job)) else {
                    break;
                };
                if now != last {
                    last = now;
                    if tx
                        .send(Ok(pb::JobEvent {
                            job: Some(last.clone()),
                        }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_job_logs(
        &self,
        req: Request<pb::GetJobLogsRequest>,
    ) -> Result<Response<pb::GetJobLogsResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::GetJobLogs).await?;
        super::read_barrier(&self.replica, &req).await?;
        let job = self.visible_job(&caller, &req.get_ref().id)?;
        let r = req.into_inner();
        let chunk = self.read_log(&job, r.stream, r.offset, r.max_bytes).await?;
        Ok(Response::new(chunk))
    }

    type FollowJobLogsStream = streams::Events<pb::GetJobLogsResponse>;

    async fn follow_job_logs(
        &self,
        req: Request<pb::FollowJobLogsRequest>,
    ) -> Result<Response<Self::FollowJobLogsStream>, Status> {
        let caller = self.auth.authorize(&req, Rpc::GetJobLogs).await?;
        let job = self.visible_job(&caller, &req.get_ref().id)?;
        let slot = self.streams.open(&caller, "FollowJobLogs")?;
        let r = req.into_inner();
        let (tx, rx) = streams::channel(slot);
        let jobs = self.clone();
        self.tasks
            .spawn(async move { jobs.follow_logs(job.id, r.stream, r.offset, tx).await });
        Ok(Response::new(rx))
    }

    type WatchJobsStream = streams::Events<pb::WatchJobsEvent>;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let caller = self.auth.authorize(&req, Rpc::WatchJob).await?;
        let from = req.get_ref().start_revision;
        if from != 0 {
            self.changes
                .check(from)
                .map_err(|t| streams::too_old(from, t))?;
        }
        let slot = self.streams.open(&caller, "WatchJobs")?;
        let (tx, rx) = streams::channel(slot);
        let log = self.changes.clone();
        self.tasks.spawn(streams::watch_jobs(log, caller, from, tx));
        Ok(Response::new(rx))
    }

    /// Why the job is where it is: for a pending job, the planner rule
    /// that holds it back right now.
    async fn explain_job(
        &self,
        req: Request<pb::ExplainJobRequest>,
    ) -> Result<Response<pb::ExplainJobResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::ExplainJob).await?;
        let job = self.visible_job(&caller, &req.get_ref().id)?;
        let now = crate::control::now_millis();
        let policy = crate::planner::Policy::default();
        let explanation = self
            .replica
            .read(|s| crate::planner::explain(s, now, &policy, job.id))
            .ok_or_else(|| Status::not_found(format!("job {} does not exist", job.id)))?;
        Ok(Response::new(pb::ExplainJobResponse {
            job: Some(self.job_reply(job.id)?),
            explanation,
        }))
    }
}

fn job_is_final(j: &pb::Job) -> bool {
    convert::parse_job_state(j.state).is_some_and(|s| s.is_final())
}
