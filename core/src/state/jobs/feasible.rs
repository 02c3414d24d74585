//! Whether some registered node could ever run a job, and precisely why
//! not: checked when a job is submitted.

use std::collections::BTreeMap;

use crate::state::outcome::Rejection;
use crate::state::types::*;
use crate::state::State;

impl State {
    /// Checks that some registered node could ever run the job, and says
    /// precisely why not.
    pub(in crate::state) fn check_feasible(&self, spec: &JobSpec) -> Result<(), Rejection> {
        if self.nodes.is_empty() {
            return Err(Rejection::PoolEmpty);
        }
        let c = &spec.constraints;
        // The common case, a job some node can hold, costs one short scan.
        let holds = |n: &&Node| {
            fits_node(c, n)
                && n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32 >= spec.gpus
        };
        if spec.nodes <= 1 && self.nodes().any(|n| holds(&n)) {
            return Ok(());
        }
        // A gang: enough such nodes in one site, found without building
        // the lists the error messages below need.
        if spec.nodes > 1 {
            let mut per_site: BTreeMap<&str, u32> = BTreeMap::new();
            for n in self.nodes().filter(holds) {
                let count = per_site.entry(n.site()).or_default();
                *count += 1;
                if *count >= spec.nodes {
                    return Ok(());
                }
            }
        }
        let certified: Vec<&Node> = self
            .nodes()
            .filter(|n| n.labels.data_level >= c.data_level)
            .collect();
        if certified.is_empty() {
            let top = self
                .nodes
                .values()
                .map(|n| n.labels.data_level)
                .max()
                .unwrap_or(0);
            return Err(Rejection::Infeasible(format!(
                "no node is certified for data level {} (the highest is {top})",
                c.data_level
            )));
        }
        let in_site: Vec<&Node> = certified
            .into_iter()
            .filter(|n| c.site.as_deref().is_none_or(|s| n.site() == s))
            .collect();
        if in_site.is_empty() {
            return Err(Rejection::Infeasible(format!(
                "no node at data level {} or above is in site '{}'",
                c.data_level,
                c.site.as_deref().unwrap_or_default()
            )));
        }
        let any_kind = |g: &Gpu, n: &Node| {
            c.gpu_model.as_deref().is_none_or(|m| g.info.model == m)
                && c.gpu_class.as_deref().is_none_or(|k| n.gpu_class(g) == k)
        };
        if !in_site
            .iter()
            .any(|n| n.gpus.iter().any(|g| any_kind(g, n)))
        {
            let what = match (&c.gpu_model, &c.gpu_class) {
                (Some(m), _) => format!("model {m}"),
                (None, Some(k)) => format!("class {k}"),
                (None, None) => "any kind".into(),
            };
            return Err(Rejection::Infeasible(format!(
                "no node{} has GPUs of {what}",
                if c.site.is_some() || c.data_level > 0 {
                    " that meets its site and data level"
                } else {
                    ""
                }
            )));
        }
        if c.min_gpu_memory_bytes > 0 {
            let largest = in_site
                .iter()
                .flat_map(|n| n.gpus.iter().filter(|g| any_kind(g, n)))
                .map(|g| g.info.memory_bytes)
                .max()
                .unwrap_or(0);
            if largest < c.min_gpu_memory_bytes {
                let kind = describe(&Constraints {
                    min_gpu_memory_bytes: 0,
                    ..c.clone()
                });
                return Err(Rejection::Infeasible(format!(
                    "it asks for GPUs with at least {} of memory, but no node has a GPU{kind} with more than {}",
                    memory(c.min_gpu_memory_bytes),
                    memory(largest)
                )));
            }
        }
        let most = in_site
            .iter()
            .map(|n| n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32)
            .max()
            .unwrap_or(0);
        if spec.gpus <= most && spec.nodes <= 1 {
            return Ok(());
        }
        if spec.gpus <= most {
            return self.check_gang_feasible(spec, &in_site);
        }
        let unconstrained = c.gpu_model.is_none()
            && c.gpu_class.is_none()
            && c.min_gpu_memory_bytes == 0
            && c.site.is_none()
            && c.data_level == 0;
        if unconstrained {
            return Err(Rejection::NoNodeCanHold {
                requested: spec.gpus,
                largest: most,
            });
        }
        Err(Rejection::Infeasible(format!(
            "it asks for {} GPUs{} on one node, but the most any node has is {most}",
            spec.gpus,
            describe(c)
        )))
    }

    /// A gang needs `nodes` distinct nodes of one site, each able to hold
    /// one task.
    fn check_gang_feasible(&self, spec: &JobSpec, candidates: &[&Node]) -> Result<(), Rejection> {
        let c = &spec.constraints;
        let mut per_site: BTreeMap<&str, u32> = BTreeMap::new();
        for n in candidates {
            if n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32 >= spec.gpus {
                *per_site.entry(n.site()).or_default() += 1;
            }
        }
        let most = per_site.values().copied().max().unwrap_or(0);
        if most >= spec.nodes {
            return Ok(());
        }
        Err(Rejection::Infeasible(format!(
            "it asks for {} nodes of {} GPUs{} in one site, but no site has more than {most} such nodes",
            spec.nodes,
            spec.gpus,
            describe(c)
        )))
    }
}

/// Whether the GPU is usable (healthy, no fault waiting to be cleared) and
/// meets the job's GPU constraints (model, class, memory).
pub fn fits_gpu(c: &Constraints, node: &Node, g: &Gpu) -> bool {
    g.usable()
        && c.gpu_model.as_deref().is_none_or(|m| g.info.model == m)
        && c.gpu_class
            .as_deref()
            .is_none_or(|k| node.gpu_class(g) == k)
        && g.info.memory_bytes >= c.min_gpu_memory_bytes
}

/// Whether the node meets the job's node constraints (site, data level).
pub fn fits_node(c: &Constraints, node: &Node) -> bool {
    node.labels.data_level >= c.data_level && c.site.as_deref().is_none_or(|s| node.site() == s)
}

/// Bytes of GPU memory for people: whole GiB when exact, else bytes.
fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{bytes} bytes")
    }
}

fn describe(c: &Constraints) -> String {
    let mut parts = vec![];
    if let Some(m) = &c.gpu_model {
        parts.push(format!("model {m}"));
    }
    if let Some(k) = &c.gpu_class {
        parts.push(format!("class {k}"));
    }
    if c.min_gpu_memory_bytes > 0 {
        parts.push(format!("at least {} GiB", c.min_gpu_memory_bytes >> 30));
    }
    if let Some(s) = &c.site {
        parts.push(format!("in site {s}"));
    }
    if c.data_level > 0 {
        parts.push(format!("certified for data level {}", c.data_level));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}
