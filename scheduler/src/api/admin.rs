//! `AdminService`: tenants, tokens and nodes. Admin token only.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::convert::{self, truncate, valid_tenant_name};
use super::{new_token, status, token_hash, Auth, Caller};
use crate::control::now_millis;
use crate::planner::accounting;
use crate::raft::Replica;
use crate::sessions::Sessions;
use crate::state::{Command, JobState, State};

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
            .ok_or_else(|| Status::not_found(format!("node '{name}' does not exist")))
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
        change: impl FnOnce(bool, bool) -> (bool, bool),
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.auth.caller(&req)?.require_admin()?;
        let name = req.into_inner().name;
        let (cordoned, draining) = self
            .replica
            .read(|s| s.node(&name).map(|n| (n.cordoned, n.draining)))
            .ok_or_else(|| {
                Status::not_found(format!("node '{}' does not exist", truncate(&name)))
            })?;
        let (cordoned, draining) = change(cordoned, draining);
        self.replica
            .propose(Command::SetNodeSchedulable {
                node: name.clone(),
                cordoned,
                draining,
            })
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
        self.auth.caller(&req)?.require_admin()?;
        let name = req.into_inner().name;
        if !valid_tenant_name(&name) {
            return Err(Status::invalid_argument(format!(
                "invalid tenant name '{}': use 1-63 lower-case letters, digits and '-', starting with a letter",
                truncate(&name)
            )));
        }
        let token = new_token("ept");
        self.replica
            .propose(Command::CreateTenant {
                name: name.clone(),
                token_hash: token_hash(&token),
            })
            .await
            .map_err(status)?;
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
        self.auth.caller(&req)?.require_admin()?;
        super::read_barrier(&self.replica, &req).await?;
        let tenants = self.replica.read(|s| {
            s.tenants()
                .filter_map(|t| tenant_view(s, &t.name))
                .collect()
        });
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.auth.caller(&req)?.require_admin()?;
        super::read_barrier(&self.replica, &req).await?;
        let nodes = self
            .replica
            .read(|s| s.nodes().map(|n| self.node_view(s, n)).collect());
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn cordon_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.set_schedulable(req, |_, draining| (true, draining))
            .await
    }

    async fn uncordon_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.set_schedulable(req, |_, _| (false, false)).await
    }

    async fn drain_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.set_schedulable(req, |_, _| (true, true)).await
    }

    async fn label_node(
        &self,
        req: Request<pb::LabelNodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.auth.caller(&req)?.require_admin()?;
        let r = req.into_inner();
        let labels = convert::node_labels(r.labels).map_err(invalid)?;
        self.replica
            .propose(Command::LabelNode {
                node: r.name.clone(),
                labels,
            })
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
        self.auth.caller(&req)?.require_admin()?;
        let r = req.into_inner();
        let (gpu_class, quota) = convert::quota(r.quota).map_err(invalid)?;
        let cmd = Command::SetTenantQuota {
            tenant: r.tenant.clone(),
            gpu_class,
            quota,
        };
        self.change_tenant(r.tenant, cmd).await
    }

    async fn set_tenant_share(
        &self,
        req: Request<pb::SetTenantShareRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        self.auth.caller(&req)?.require_admin()?;
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
        self.change_tenant(r.tenant, cmd).await
    }

    async fn set_class_cap(
        &self,
        req: Request<pb::SetClassCapRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        self.auth.caller(&req)?.require_admin()?;
        let r = req.into_inner();
        let cmd = Command::SetClassCap {
            tenant: r.tenant.clone(),
            job_class: convert::parse_job_class(r.job_class).map_err(invalid)?,
            max_gpus: convert::cap(r.max_gpus).map_err(invalid)?,
        };
        self.change_tenant(r.tenant, cmd).await
    }

    /// Admins see every tenant; a tenant sees itself.
    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let caller = self.auth.caller(&req)?;
        let name = req.into_inner().name;
        match &caller {
            Caller::Admin => {}
            Caller::Tenant(t) if *t == name => {}
            _ => {
                return Err(Status::permission_denied(
                    "only an admin or the tenant itself may read a tenant's policy",
                ))
            }
        }
        self.tenant_reply(&name)
    }

    async fn clear_gpu(
        &self,
        req: Request<pb::ClearGpuRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        self.auth.caller(&req)?.require_admin()?;
        let pb::ClearGpuRequest { node, gpu_uuid } = req.into_inner();
        if gpu_uuid.is_empty() {
            return Err(Status::invalid_argument(
                "give the UUID of the GPU to clear (see `edupoolctl node list`)",
            ));
        }
        self.replica
            .propose(Command::GpuHealthChanged {
                node: truncate(&node),
                gpu: truncate(&gpu_uuid),
                healthy: true,
                reason: String::new(),
                cleared_by: Some("admin".into()),
            })
            .await
            .map_err(status)?;
        tracing::info!(node, gpu = gpu_uuid, "GPU cleared by an admin");
        Ok(Response::new(pb::NodeResponse {
            node: Some(self.node_reply(&node)?),
        }))
    }
}

fn tenant_view(s: &State, name: &str) -> Option<pb::Tenant> {
    let t = s.tenant(name)?;
    let mut view = pb::Tenant {
        name: t.name.clone(),
        created_at_ms: t.created_at,
        ..Default::default()
    };
    for j in s.jobs().filter(|j| j.tenant == name) {
        match j.state {
            JobState::Pending => view.pending_jobs += 1,
            s if s.is_placed() => {
                view.running_jobs += 1;
                view.gpus_in_use += j.spec.gpus;
            }
            _ => {}
        }
    }
    Some(view)
}

impl Admin {
    /// Proposes a tenant policy change and replies with the tenant's view.
    async fn change_tenant(
        &self,
        tenant: String,
        cmd: Command,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        self.replica.propose(cmd).await.map_err(status)?;
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
