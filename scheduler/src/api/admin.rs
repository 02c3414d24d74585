//! `AdminService`: tenants, tokens and nodes. Admin token only.

use edupool_proto::v1 as pb;
use edupool_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::convert::{self, truncate, valid_tenant_name};
use super::{new_token, status, token_hash, Auth};
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
