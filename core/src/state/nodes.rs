//! The sub-machine of nodes: agents connecting and leaving, GPU health,
//! labels and cordons. What happens to the jobs on a node it leaves to
//! `jobs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::outcome::{stop_tasks, Applied, Effect, Outcome, Rejection, TaskEnd};
use super::types::*;
use super::State;

/// What a node reported it can run jobs in.
pub(super) struct NodeSoftware {
    pub images: Vec<String>,
    pub allows_host_jobs: bool,
}

impl State {
    pub(super) fn node_connected(
        &mut self,
        name: String,
        gpus: Vec<GpuInfo>,
        host: Host,
        agent_version: String,
        software: NodeSoftware,
        at: Millis,
    ) -> Applied {
        let NodeSoftware {
            mut images,
            allows_host_jobs,
        } = software;
        // Kept sorted so that a lookup is a binary search; the edge has
        // checked the names and their number.
        images.sort_unstable();
        images.dedup();
        let mut effects = vec![];
        let previous = self.nodes.remove(&name);
        let (cordoned, draining) = previous
            .as_ref()
            .map_or((false, false), |n| (n.cordoned, n.draining));
        let labels = previous
            .as_ref()
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        // What its jobs hold stays theirs across a reconnect.
        let host_held = previous.as_ref().map(|n| n.host_held).unwrap_or_default();
        // A fault outlives reconnects: only an admin clears it.
        let faults: BTreeMap<String, GpuFault> = previous
            .iter()
            .flat_map(|n| &n.gpus)
            .filter_map(|g| g.fault.clone().map(|f| (g.info.uuid.clone(), f)))
            .collect();
        let mut held: BTreeMap<String, BTreeMap<JobId, u32>> = previous
            .into_iter()
            .flat_map(|n| Arc::unwrap_or_clone(n).gpus)
            .map(|g| (g.info.uuid, g.holders))
            .collect();
        let gpus: Vec<Gpu> = gpus
            .into_iter()
            .map(|info| Gpu {
                holders: held.remove(&info.uuid).unwrap_or_default(),
                fault: faults.get(&info.uuid).cloned().map(|mut f| {
                    f.reset_seen |= info.healthy;
                    f
                }),
                info,
            })
            .collect();
        let unhealthy: Vec<(String, String)> = gpus
            .iter()
            .filter(|g| !g.info.healthy)
            .map(|g| (g.info.uuid.clone(), g.info.health_reason.clone()))
            .collect();
        self.nodes.insert(
            name.clone(),
            Arc::new(Node {
                name: name.clone(),
                gpus,
                status: NodeStatus::Ready,
                cordoned,
                draining,
                agent_version,
                status_since: at,
                labels,
                images,
                allows_host_jobs,
                cpu_millicores: host.cpu_millicores,
                memory_bytes: host.memory_bytes,
                host_held,
            }),
        );
        for (uuid, reason) in unhealthy {
            effects.extend(self.fail_gpu(&name, &uuid, reason, at));
        }
        // A job whose GPUs are no longer on the node cannot keep running.
        let here: BTreeSet<&str> = self
            .nodes
            .get(&name)
            .into_iter()
            .flat_map(|n| &n.gpus)
            .map(|g| g.info.uuid.as_str())
            .collect();
        let vanished: BTreeSet<JobId> = self
            .jobs_on(&name)
            .filter(|j| {
                j.tasks
                    .iter()
                    .filter(|t| t.node == name)
                    .flat_map(|t| &t.gpus)
                    .any(|u| !here.contains(u.as_str()))
            })
            .map(|j| j.id)
            .collect();
        for id in vanished {
            let why = TaskEnd::Lost("its GPUs left the node".into());
            effects.extend(self.task_ended(id, &name, why, at));
        }
        Ok((Outcome::Node(name), effects))
    }

    pub(super) fn node_disconnected(&mut self, name: &str, at: Millis) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        if node.status == NodeStatus::Ready {
            node.status = NodeStatus::Down;
            node.status_since = at;
        }
        Ok((Outcome::Node(name.to_string()), vec![]))
    }

    pub(super) fn node_lost(&mut self, name: &str, at: Millis) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        if node.status == NodeStatus::Ready {
            // The agent came back before the loss was committed.
            return Ok((Outcome::Node(name.to_string()), vec![]));
        }
        node.status = NodeStatus::Lost;
        node.status_since = at;
        let ids: Vec<JobId> = self.jobs_on(name).map(|j| j.id).collect();
        let why = format!("node {name} was lost");
        let effects = ids
            .into_iter()
            .flat_map(|id| self.task_ended(id, name, TaskEnd::Lost(why.clone()), at))
            .collect();
        Ok((Outcome::Node(name.to_string()), effects))
    }

    pub(super) fn gpu_health_changed(
        &mut self,
        node: &str,
        uuid: &str,
        healthy: bool,
        reason: String,
        cleared_by: Option<String>,
        at: Millis,
    ) -> Applied {
        let gpu = self.gpu_mut(node, uuid)?;
        let outcome = Outcome::Node(node.to_string());
        if !healthy {
            gpu.info.healthy = false;
            gpu.info.health_reason = reason.clone();
            let effects = self.fail_gpu(node, uuid, reason, at);
            return Ok((outcome, effects));
        }
        match cleared_by {
            None => {
                gpu.info.healthy = true;
                gpu.info.health_reason.clear();
                if let Some(fault) = &mut gpu.fault {
                    fault.reset_seen = true;
                }
            }
            Some(_) => {
                let Some(fault) = &gpu.fault else {
                    return Err(Rejection::GpuNotFaulty {
                        node: node.to_string(),
                        gpu: uuid.to_string(),
                    });
                };
                if !(fault.reset_seen && gpu.info.healthy) {
                    return Err(Rejection::GpuNotReset {
                        node: node.to_string(),
                        gpu: uuid.to_string(),
                        reason: fault.reason.clone(),
                    });
                }
                gpu.fault = None;
            }
        }
        Ok((outcome, vec![]))
    }

    pub(super) fn gpu_mut(&mut self, node: &str, uuid: &str) -> Result<&mut Gpu, Rejection> {
        self.nodes
            .get_mut(node)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(node.to_string()))?
            .gpus
            .iter_mut()
            .find(|g| g.info.uuid == uuid)
            .ok_or_else(|| Rejection::UnknownGpu {
                node: node.to_string(),
                gpu: uuid.to_string(),
            })
    }

    /// Marks a GPU failed (keeping the time of a fault already recorded)
    /// and orders every job holding it stopped (all of its tasks); their
    /// exits requeue them per their spec.
    pub(super) fn fail_gpu(
        &mut self,
        node: &str,
        uuid: &str,
        reason: String,
        at: Millis,
    ) -> Vec<Effect> {
        let Ok(gpu) = self.gpu_mut(node, uuid) else {
            return vec![];
        };
        let reason = if reason.is_empty() {
            "reported unhealthy by its agent".to_string()
        } else {
            reason
        };
        let since = gpu.fault.as_ref().map_or(at, |f| f.since);
        gpu.fault = Some(GpuFault {
            reason: reason.clone(),
            since,
            reset_seen: false,
        });
        let holders: Vec<JobId> = gpu.holders.keys().copied().collect();
        let mut effects = vec![];
        for id in holders {
            // A holder is a job the table has; one it lacks has nothing
            // to stop.
            let Some(job) = self.jobs.get_mut(&id).map(Arc::make_mut) else {
                continue;
            };
            // A job already on its way out (cancelled, preempted, or
            // stopping after another task ended) ends as it was going to.
            if !matches!(job.state, JobState::Assigned | JobState::Running)
                || job.gpu_fault.is_some()
                || job.ending.is_some()
            {
                continue;
            }
            let why = format!("GPU {uuid} on {node} failed: {reason}");
            job.gpu_fault = Some(why.clone());
            job.reason = format!("{why}; stopping it to requeue");
            // Every task stops, with its grace period: a gang cannot run
            // with one task short.
            effects.extend(stop_tasks(job, &why));
            effects.push(Effect::JobChanged(id));
        }
        effects
    }

    pub(super) fn set_schedulable(
        &mut self,
        name: &str,
        cordoned: bool,
        draining: bool,
    ) -> Applied {
        let node = self
            .nodes
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(name.to_string()))?;
        node.cordoned = cordoned;
        node.draining = draining;
        Ok((Outcome::Node(name.to_string()), vec![]))
    }

    pub(super) fn label_node(&mut self, node: String, labels: NodeLabels) -> Applied {
        let n = self
            .nodes
            .get_mut(&node)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::UnknownNode(node.clone()))?;
        if let Some(owner) = &labels.owner {
            if !self.tenants.contains_key(owner) {
                return Err(Rejection::UnknownTenant(owner.clone()));
            }
        }
        n.labels = labels;
        Ok((Outcome::Node(node), vec![]))
    }
}
