//! One method per CLI command: call the scheduler, print the result in the
//! chosen [`OutputFormat`] to a writer, and return what the scheduler said.

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

use edupool_proto::v1::{
    CancelJobRequest, ClearGpuRequest, CreateTenantRequest, GetJobLogsRequest, GetJobRequest, Job,
    JobSpec, JobState, ListJobsRequest, ListNodesRequest, ListTenantsRequest, LogStream, Node,
    NodeRequest, SubmitJobRequest, Tenant, WatchJobRequest,
};
use tonic::Status;

use crate::{
    client::{describe_status, Clients},
    job_state_name,
    output::{self, JobView, NewTenantView, NodeView, OutputFormat, TenantView},
    paging,
};

/// How often `job logs --follow` asks for more once it has read everything.
pub const LOG_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Why a command failed. Messages are one line for a person.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The scheduler refused or failed the call.
    #[error("{}", describe_status(.0))]
    Rpc(Status),
    /// Writing the output failed (for example a closed pipe).
    #[error("cannot write output: {0}")]
    Output(io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(serde_json::Error),
    /// The scheduler's answer lacks a field the protocol promises.
    #[error("the scheduler's response has no {0}")]
    MissingField(&'static str),
}

impl CommandError {
    /// The gRPC status, when the scheduler answered with an error.
    pub fn status(&self) -> Option<&Status> {
        match self {
            CommandError::Rpc(status) => Some(status),
            _ => None,
        }
    }

    /// True when the reader of our output went away (`edupoolctl ... | head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CommandError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl From<Status> for CommandError {
    fn from(status: Status) -> Self {
        CommandError::Rpc(status)
    }
}

impl From<io::Error> for CommandError {
    fn from(error: io::Error) -> Self {
        CommandError::Output(error)
    }
}

impl From<serde_json::Error> for CommandError {
    fn from(error: serde_json::Error) -> Self {
        CommandError::Json(error)
    }
}

/// Which jobs `job list` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Empty: every state.
    pub states: Vec<JobState>,
    /// Admins only; `None`: every tenant the caller may see.
    pub tenant: Option<String>,
    /// `None`: no limit.
    pub limit: Option<u32>,
}

/// The admin's node operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    Cordon,
    Uncordon,
    Drain,
}

/// A connected client that prints to `out`.
pub struct Ctl<W> {
    pub clients: Clients,
    pub format: OutputFormat,
    pub out: W,
    /// See [`LOG_POLL_INTERVAL`].
    pub log_poll_interval: Duration,
}

impl<W: Write> Ctl<W> {
    pub fn new(clients: Clients, format: OutputFormat, out: W) -> Self {
        Ctl {
            clients,
            format,
            out,
            log_poll_interval: LOG_POLL_INTERVAL,
        }
    }

    /// `job submit`: prints `submitted job <id> (<state>)`, or the job as
    /// JSON. With `array` > 0, submits a job array of that many jobs and
    /// prints the range of their ids (JSON: the first job and every id).
    /// `request_id` (empty: none) makes a repeat of this call answer with
    /// the same job instead of a second one.
    pub async fn submit_job(
        &mut self,
        spec: JobSpec,
        array: u32,
        request_id: &str,
    ) -> Result<Job, CommandError> {
        let reply = self
            .clients
            .jobs
            .submit_job(SubmitJobRequest {
                spec: Some(spec),
                array,
                request_id: request_id.to_owned(),
            })
            .await?
            .into_inner();
        let job = reply.job.ok_or(CommandError::MissingField("job"))?;
        let ids = reply.array_job_ids;
        match (self.format, ids.last()) {
            (OutputFormat::Table, None) => writeln!(
                self.out,
                "submitted job {} ({})",
                job.id,
                job_state_name(job.state)
            )?,
            (OutputFormat::Table, Some(last)) => writeln!(
                self.out,
                "submitted job array {}..{last} ({} jobs, {})",
                job.id,
                ids.len(),
                job_state_name(job.state)
            )?,
            (OutputFormat::Json, None) => self.json(&JobView::from(&job))?,
            (OutputFormat::Json, Some(_)) => self.json(&serde_json::json!({
                "first": JobView::from(&job),
                "array_job_ids": ids,
            }))?,
        }
        self.out.flush()?;
        Ok(job)
    }

    /// `job list`: newest first, every page up to the limit.
    pub async fn list_jobs(&mut self, filter: JobFilter) -> Result<Vec<Job>, CommandError> {
        let states: Vec<i32> = filter.states.iter().map(|s| *s as i32).collect();
        let tenant = filter.tenant.unwrap_or_default();
        let limited = filter.limit.is_some();
        let client = &mut self.clients.jobs;
        let jobs = paging::walk(filter.limit.map(|n| n as usize), async |token, want| {
            let request = ListJobsRequest {
                states: states.clone(),
                tenant: tenant.clone(),
                page_size: paging::page_size(limited, want),
                page_token: token,
                ..Default::default()
            };
            let r = client.list_jobs(request).await?.into_inner();
            Ok::<_, CommandError>((r.jobs, r.next_page_token))
        })
        .await?;
        match self.format {
            OutputFormat::Table if jobs.is_empty() => writeln!(self.out, "no jobs")?,
            OutputFormat::Table => self
                .out
                .write_all(output::job_table(&jobs, SystemTime::now()).as_bytes())?,
            OutputFormat::Json => {
                self.json(&jobs.iter().map(JobView::from).collect::<Vec<_>>())?;
            }
        }
        self.out.flush()?;
        Ok(jobs)
    }

    /// `job get`: the job as `key: value` lines, or JSON.
    pub async fn get_job(&mut self, id: &str) -> Result<Job, CommandError> {
        let job = self
            .clients
            .jobs
            .get_job(GetJobRequest { id: id.to_owned() })
            .await?
            .into_inner()
            .job
            .ok_or(CommandError::MissingField("job"))?;
        self.print_job(&job)?;
        Ok(job)
    }

    /// `job cancel`: prints the job's state after the request.
    pub async fn cancel_job(&mut self, id: &str, reason: &str) -> Result<Job, CommandError> {
        let job = self
            .clients
            .jobs
            .cancel_job(CancelJobRequest {
                id: id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner()
            .job
            .ok_or(CommandError::MissingField("job"))?;
        match self.format {
            OutputFormat::Table => {
                writeln!(self.out, "job {} is {}", job.id, job_state_name(job.state))?
            }
            OutputFormat::Json => self.json(&JobView::from(&job))?,
        }
        self.out.flush()?;
        Ok(job)
    }

    /// `job logs`: copies the log's raw bytes to `out` (whatever the output
    /// format), reading chunk by chunk from offset 0. Without `follow` it
    /// stops at the current end; with `follow` it polls every
    /// `log_poll_interval` until the scheduler says the log is complete.
    /// Returns the number of bytes written.
    pub async fn job_logs(
        &mut self,
        id: &str,
        stream: LogStream,
        follow: bool,
    ) -> Result<u64, CommandError> {
        let mut offset = 0u64;
        let mut written = 0u64;
        loop {
            let chunk = self
                .clients
                .jobs
                .get_job_logs(GetJobLogsRequest {
                    id: id.to_owned(),
                    stream: stream as i32,
                    offset,
                    max_bytes: 0,
                })
                .await?
                .into_inner();
            let len = chunk.data.len() as u64;
            if len > 0 {
                self.out.write_all(&chunk.data)?;
                self.out.flush()?;
                written += len;
            }
            // Trust the server's offset when it moves forward; otherwise
            // count what was received.
            offset = if chunk.next_offset > offset {
                chunk.next_offset
            } else {
                offset + len
            };
            if chunk.eof || len == 0 {
                if !follow || chunk.complete {
                    return Ok(written);
                }
                tokio::time::sleep(self.log_poll_interval).await;
            }
        }
    }

    /// `job watch`: one line (or one JSON object) per event until the
    /// scheduler ends the stream. Returns the last state seen.
    pub async fn watch_job(&mut self, id: &str) -> Result<Option<Job>, CommandError> {
        let mut events = self
            .clients
            .jobs
            .watch_job(WatchJobRequest { id: id.to_owned() })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(event) = events.message().await? {
            let Some(job) = event.job else { continue };
            match self.format {
                OutputFormat::Table => writeln!(self.out, "{}", output::job_event_line(&job))?,
                OutputFormat::Json => {
                    writeln!(self.out, "{}", output::to_json_line(&JobView::from(&job))?)?;
                }
            }
            self.out.flush()?;
            last = Some(job);
        }
        Ok(last)
    }

    /// `node list`.
    pub async fn list_nodes(&mut self) -> Result<Vec<Node>, CommandError> {
        let nodes = self.fetch_nodes().await?;
        match self.format {
            OutputFormat::Table if nodes.is_empty() => writeln!(self.out, "no nodes")?,
            OutputFormat::Table => self
                .out
                .write_all(output::node_table(&nodes, SystemTime::now()).as_bytes())?,
            OutputFormat::Json => {
                self.json(&nodes.iter().map(NodeView::from).collect::<Vec<_>>())?;
            }
        }
        self.out.flush()?;
        Ok(nodes)
    }

    /// Every node, all pages, printing nothing.
    pub async fn fetch_nodes(&mut self) -> Result<Vec<Node>, CommandError> {
        let client = &mut self.clients.admin;
        let nodes = paging::walk(None, async |page_token, _| {
            let request = ListNodesRequest {
                page_size: 0,
                page_token,
            };
            let r = client.list_nodes(request).await?.into_inner();
            Ok::<_, CommandError>((r.nodes, r.next_page_token))
        })
        .await?;
        Ok(nodes)
    }

    /// `node cordon`, `node uncordon`, `node drain`.
    pub async fn node_action(
        &mut self,
        name: &str,
        action: NodeAction,
    ) -> Result<Node, CommandError> {
        let request = NodeRequest {
            name: name.to_owned(),
        };
        let admin = &mut self.clients.admin;
        let response = match action {
            NodeAction::Cordon => admin.cordon_node(request).await?,
            NodeAction::Uncordon => admin.uncordon_node(request).await?,
            NodeAction::Drain => admin.drain_node(request).await?,
        };
        let node = response
            .into_inner()
            .node
            .ok_or(CommandError::MissingField("node"))?;
        match self.format {
            OutputFormat::Table => {
                let what = match action {
                    NodeAction::Cordon => "cordoned; no new jobs will be placed on it".to_owned(),
                    NodeAction::Uncordon => "uncordoned; it takes new jobs again".to_owned(),
                    NodeAction::Drain if node.running_jobs == 0 => {
                        "draining; it is empty".to_owned()
                    }
                    NodeAction::Drain => format!(
                        "draining; waiting for {} running job{} to finish",
                        node.running_jobs,
                        if node.running_jobs == 1 { "" } else { "s" }
                    ),
                };
                writeln!(self.out, "node {} {what}", node.name)?;
            }
            OutputFormat::Json => self.json(&NodeView::from(&node))?,
        }
        self.out.flush()?;
        Ok(node)
    }

    /// `node clear-gpu`: returns the GPU to placement.
    pub async fn clear_gpu(&mut self, name: &str, gpu_uuid: &str) -> Result<Node, CommandError> {
        let node = self
            .clients
            .admin
            .clear_gpu(ClearGpuRequest {
                node: name.to_owned(),
                gpu_uuid: gpu_uuid.to_owned(),
            })
            .await?
            .into_inner()
            .node
            .ok_or(CommandError::MissingField("node"))?;
        match self.format {
            OutputFormat::Table => writeln!(
                self.out,
                "GPU {gpu_uuid} on node {} cleared; jobs may be placed on it again",
                node.name
            )?,
            OutputFormat::Json => self.json(&NodeView::from(&node))?,
        }
        self.out.flush()?;
        Ok(node)
    }

    /// `tenant create`: prints the tenant and its token, which the
    /// scheduler will never show again. Returns both.
    pub async fn create_tenant(&mut self, name: &str) -> Result<(Tenant, String), CommandError> {
        let response = self
            .clients
            .admin
            .create_tenant(CreateTenantRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        let tenant = response
            .tenant
            .ok_or(CommandError::MissingField("tenant"))?;
        let token = response.token;
        match self.format {
            OutputFormat::Table => write!(
                self.out,
                "created tenant {}\ntoken: {token}\n\
                 Keep this token now: the scheduler stores only its hash and cannot show it again.\n",
                tenant.name
            )?,
            OutputFormat::Json => self.json(&NewTenantView {
                tenant: TenantView::from(&tenant),
                token: token.clone(),
            })?,
        }
        self.out.flush()?;
        Ok((tenant, token))
    }

    /// `tenant list`.
    pub async fn list_tenants(&mut self) -> Result<Vec<Tenant>, CommandError> {
        let client = &mut self.clients.admin;
        let tenants = paging::walk(None, async |page_token, _| {
            let request = ListTenantsRequest {
                page_size: 0,
                page_token,
            };
            let r = client.list_tenants(request).await?.into_inner();
            Ok::<_, CommandError>((r.tenants, r.next_page_token))
        })
        .await?;
        match self.format {
            OutputFormat::Table if tenants.is_empty() => writeln!(self.out, "no tenants")?,
            OutputFormat::Table => self
                .out
                .write_all(output::tenant_table(&tenants, SystemTime::now()).as_bytes())?,
            OutputFormat::Json => {
                self.json(&tenants.iter().map(TenantView::from).collect::<Vec<_>>())?;
            }
        }
        self.out.flush()?;
        Ok(tenants)
    }

    fn print_job(&mut self, job: &Job) -> Result<(), CommandError> {
        match self.format {
            OutputFormat::Table => self
                .out
                .write_all(output::job_detail(job, SystemTime::now()).as_bytes())?,
            OutputFormat::Json => self.json(&JobView::from(job))?,
        }
        self.out.flush()?;
        Ok(())
    }

    fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CommandError> {
        writeln!(self.out, "{}", output::to_json(value)?)?;
        Ok(())
    }
}
