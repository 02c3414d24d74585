//! `AdminService`: tenants, tokens, nodes, the kill switch and the audit
//! trail. Which role may call what is in `access.rs`.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::convert::{self, truncate, valid_tenant_name};
use super::{new_token, paging, status, token_hash, Auth, Caller, Rpc};
use crate::control::now_millis;
use crate::planner::accounting;
use crate::raft::Replica;
use crate::sessions::Sessions;
use crate::state::{Command, JobState, State, WHOLE_GPU};

const WHOLE_GPU_MILLI: u64 = WHOLE_GPU as u64;

#[derive(Clone)]
pub struct Admin {
    pub replica: Replica,
    pub auth: Auth,
    pub sessions: Sessions,
}

impl Admin {
    fn node_reply(&self, name: &str) -> Result<pb::Node, Status> {
        self.replica
            .read(|s| s.node(name).map(|n| self.node_view(s, n)))
            .ok_or_else(|| Status::not_found(format!("node '{}' does not exist", truncate(name))))
    }

    fn node_view(&self, s: &State, n: &crate::state::Node) -> pb::Node {
        let running = s.jobs_on(&n.name).count() as u32;
        let last_seen = self
            .sessions
            .last_seen_ms(&n.name)
            .unwrap_or(n.status_since);
        let mut node = convert::node(n, running, last_seen);
        for gpu in &mut node.gpus {
            gpu.telemetry = self.sessions.telemetry(&n.name, &gpu.uuid);
        }
        node
    }

    async fn set_schedulable(
        &self,
        req: Request<pb::NodeRequest>,
        rpc: Rpc,
        change: impl FnOnce(bool, bool) -> (bool, bool),
    ) -> Result<Response<pb::NodeResponse>, Status> {
        let target = req.get_ref().name.clone();
        let caller = self.auth.authorize_on(&req, rpc, &target).await?;
        let name = req.into_inner().name;
        let (cordoned, draining) = self
            .replica
            .read(|s| s.node(&name).map(|n| (n.cordoned, n.draining)))
            .ok_or_else(|| {
                Status::not_found(format!("node '{}' does not exist", truncate(&name)))
            })?;
        let (cordoned, draining) = change(cordoned, draining);
        self.replica
            .propose(caller.audited(
                rpc,
                name.clone(),
                Command::SetNodeSchedulable {
                    node: name.clone(),
                    cordoned,
                    draining,
                },
            ))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::NodeResponse {
            node: Some(self.node_reply(&name)?),
        }))
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let target = req.get_ref().name.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::CreateTenant, &target)
            .await?;
        let name = req.into_inner().name;
        if !valid_tenant_name(&name) {
            return Err(Status::invalid_argument(format!(
                "invalid tenant name '{}': use 1-63 lower-case letters, digits and '-', starting with a letter",
                truncate(&name)
            )));
        }
        let token = new_token("ept");
        self.replica
            .propose(caller.audited(
                Rpc::CreateTenant,
                name.clone(),
                Command::CreateTenant {
                    name: name.clone(),
                    token_hash: token_hash(&token),
                },
            ))
            .await
            .map_err(status)?;
        // Its uid offset, in an entry of its own so that every replica
        // assigns it at the same point of the log (the leader's control
        // loop retries it if this fails).
        if let Err(e) = self.replica.propose(Command::AssignUidOffsets).await {
            tracing::warn!(tenant = name, "uid offset not assigned yet: {e}");
        }
        let tenant = self
            .replica
            .read(|s| tenant_view(s, &name))
            .ok_or_else(|| Status::internal("tenant vanished after it was written"))?;
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(tenant),
            token,
        }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.auth.authorize(&req, Rpc::ListTenants).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let page = paging::request::<String>("tenants", paging::SMALL, r.page_size, &r.page_token)?;
        let (tenants, next_page_token) = self.replica.read(|s| {
            let after = s
                .tenants()
                .filter(|t| page.after.as_ref().is_none_or(|a| t.name > *a))
                .filter_map(|t| Some((t.name.clone(), tenant_view(s, &t.name)?)));
            paging::cut("tenants", page.size, after)
        });
        Ok(Response::new(pb::ListTenantsResponse {
            tenants,
            next_page_token,
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.auth.authorize(&req, Rpc::ListNodes).await?;
        super::read_barrier(&self.replica, &req).await?;
        let r = req.into_inner();
        let page = paging::request::<String>("nodes", paging::SMALL, r.page_size, &r.page_token)?;
        let (nodes, next_page_token) = self.replica.read(|s| {
            let after = s
                .nodes()
                .filter(|n| page.after.as_ref().is_none_or(|a| n.name > *a))
                .map(|n| (n.name.clone(), self.node_view(s, n)));
            paging::cut("nodes", page.size, after)
        });
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn cordon_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.set_schedulable(req, Rpc::CordonNode, |_, draining| (true, draining))
            .await
    }

    async fn uncordon_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.set_schedulable(req, Rpc::UncordonNode, |_, _| (false, false))
            .await
    }

    async fn drain_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.set_schedulable(req, Rpc::DrainNode, |_, _| (true, true))
            .await
    }

    async fn label_node(
        &self,
        req: Request<pb::LabelNodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        let target = req.get_ref().name.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::LabelNode, &target)
            .await?;
        let r = req.into_inner();
        let labels = convert::node_labels(r.labels).map_err(invalid)?;
        self.replica
            .propose(caller.audited(
                Rpc::LabelNode,
                truncate(&r.name),
                Command::LabelNode {
                    node: r.name.clone(),
                    labels,
                },
            ))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::NodeResponse {
            node: Some(self.node_reply(&r.name)?),
        }))
    }

    async fn set_tenant_quota(
        &self,
        req: Request<pb::SetTenantQuotaRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let target = req.get_ref().tenant.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::SetTenantQuota, &target)
            .await?;
        let r = req.into_inner();
        let (gpu_class, quota) = convert::quota(r.quota).map_err(invalid)?;
        let cmd = Command::SetTenantQuota {
            tenant: r.tenant.clone(),
            gpu_class,
            quota,
        };
        self.change_tenant(&caller, Rpc::SetTenantQuota, r.tenant, cmd)
            .await
    }

    async fn set_tenant_share(
        &self,
        req: Request<pb::SetTenantShareRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let target = req.get_ref().tenant.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::SetTenantShare, &target)
            .await?;
        let r = req.into_inner();
        let current = self
            .replica
            .read(|s| s.tenant(&r.tenant).map(|t| t.policy.clone()))
            .ok_or_else(|| {
                Status::not_found(format!("tenant '{}' does not exist", truncate(&r.tenant)))
            })?;
        let cmd = Command::SetTenantShare {
            tenant: r.tenant.clone(),
            weight_milli: convert::weight("weight", r.weight_milli, current.weight_milli)
                .map_err(invalid)?,
            equity_milli: convert::weight("equity", r.equity_milli, current.equity_milli)
                .map_err(invalid)?,
        };
        self.change_tenant(&caller, Rpc::SetTenantShare, r.tenant, cmd)
            .await
    }

    async fn set_class_cap(
        &self,
        req: Request<pb::SetClassCapRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let target = req.get_ref().tenant.clone();
        let caller = self
            .auth
            .authorize_on(&req, Rpc::SetClassCap, &target)
            .await?;
        let r = req.into_inner();
        let cmd = Command::SetClassCap {
            tenant: r.tenant.clone(),
            job_class: convert::parse_job_class(r.job_class).map_err(invalid)?,
            max_gpus: convert::cap(r.max_gpus).map_err(invalid)?,
        };
        self.change_tenant(&caller, Rpc::SetClassCap, r.tenant, cmd)
            .await
    }

    /// Admins and auditors see every tenant; a tenant-admin its own (any
    /// other is reported as absent).
    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let caller = self.auth.authorize(&req, Rpc::GetTenant).await?;
        let name = req.into_inner().name;
        if !caller.sees_tenant(&name) {
            return Err(Status::not_found(format!(
                "tenant '{}' does not exist",
                truncate(&name)
            )));
        }
        self.tenant_reply(&name)
    }

    async fn clear_gpu(
        &self,
        req: Request<pb::ClearGpuRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        let target = req.get_ref().node.clone();
        let caller = self.auth.authorize_on(&req, Rpc::ClearGpu, &target).await?;
        let pb::ClearGpuRequest { node, gpu_uuid } = req.into_inner();
        if gpu_uuid.is_empty() {
            return Err(Status::invalid_argument(
                "give the UUID of the GPU to clear (see `edupoolctl node list`)",
            ));
        }
        self.replica
            .propose(caller.audited(
                Rpc::ClearGpu,
                format!("{}/{}", truncate(&node), truncate(&gpu_uuid)),
                Command::GpuHealthChanged {
                    node: truncate(&node),
                    gpu: truncate(&gpu_uuid),
                    healthy: true,
                    reason: String::new(),
                    cleared_by: Some(caller.token_id.clone()),
                },
            ))
            .await
            .map_err(status)?;
        tracing::info!(node, gpu = gpu_uuid, "GPU cleared by an admin");
        Ok(Response::new(pb::NodeResponse {
            node: Some(self.node_reply(&node)?),
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.create_token_call(req).await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.list_tokens_call(req).await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        self.revoke_token_call(req).await
    }

    async fn suspend_tenant(
        &self,
        req: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::TenantStatus>, Status> {
        self.suspend_tenant_call(req).await
    }

    async fn resume_tenant(
        &self,
        req: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::TenantStatus>, Status> {
        self.resume_tenant_call(req).await
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.list_audit_call(req).await
    }

    async fn export_audit(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditResponse>, Status> {
        self.export_audit_call(req).await
    }

    async fn list_refused_calls(
        &self,
        req: Request<pb::ListRefusedCallsRequest>,
    ) -> Result<Response<pb::ListRefusedCallsResponse>, Status> {
        self.list_refused_calls_call(req).await
    }
}

fn tenant_view(s: &State, name: &str) -> Option<pb::Tenant> {
    let t = s.tenant(name)?;
    let mut view = pb::Tenant {
        name: t.name.clone(),
        created_at_ms: t.created_at,
        ..Default::default()
    };
    if let Some(sus) = s.suspension(name) {
        view.suspended = true;
        view.suspended_reason = sus.reason.clone();
    }
    let mut held_milli = 0;
    for j in s.jobs().filter(|j| j.tenant == name) {
        match j.state {
            JobState::Pending => view.pending_jobs += 1,
            s if s.is_placed() => {
                view.running_jobs += 1;
                held_milli += j.held_gpu_milli();
            }
            _ => {}
        }
    }
    view.gpus_in_use = u32::try_from(held_milli.div_ceil(WHOLE_GPU_MILLI)).unwrap_or(u32::MAX);
    Some(view)
}

impl Admin {
    /// Proposes a tenant policy change and replies with the tenant's view.
    async fn change_tenant(
        &self,
        caller: &Caller,
        rpc: Rpc,
        tenant: String,
        cmd: Command,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        self.replica
            .propose(caller.audited(rpc, truncate(&tenant), cmd))
            .await
            .map_err(status)?;
        self.tenant_reply(&tenant)
    }

    fn tenant_reply(&self, name: &str) -> Result<Response<pb::GetTenantResponse>, Status> {
        let now = now_millis();
        let report = self
            .replica
            .read(|s| {
                s.tenant(name)?;
                accounting::tenant_reports(s, now)
                    .into_iter()
                    .find(|r| r.name == name)
            })
            .ok_or_else(|| {
                Status::not_found(format!("tenant '{}' does not exist", truncate(name)))
            })?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(convert::tenant_view(&report)),
        }))
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}
