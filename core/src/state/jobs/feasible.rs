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
        self.check_request(spec).map_err(Rejection::Infeasible)?;
        let c = &spec.constraints;
        let host = spec.host();
        // The common case, a job some node can hold, costs one short scan.
        let holds = |n: &&Node| {
            fits_node(c, n)
                && n.host_allocatable().holds(host)
                && (spec.gpus == 0
                    || n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32 >= spec.gpus)
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
        if spec.gpus == 0 {
            return self.check_host_feasible(spec, &in_site);
        }
        let any_kind =
            |g: &Gpu, n: &Node| c.allows_model(&g.info.model) && c.allows_class(n.gpu_class(g));
        if !in_site
            .iter()
            .any(|n| n.gpus.iter().any(|g| any_kind(g, n)))
        {
            let what = match c.describe_gpu_kind() {
                k if k.is_empty() => "any kind".to_string(),
                k => k,
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
        if spec.gpus <= most {
            let with_gpus: Vec<&Node> = in_site
                .iter()
                .filter(|n| n.gpus.iter().filter(|g| fits_gpu(c, n, g)).count() as u32 >= spec.gpus)
                .copied()
                .collect();
            return self.check_host_feasible(spec, &with_gpus);
        }
        let unconstrained = !c.names_gpu_kind()
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

    /// The nodes left hold the job's GPUs: one of them must also have the
    /// CPU and memory of a task (a gang: enough of them in one site).
    fn check_host_feasible(&self, spec: &JobSpec, candidates: &[&Node]) -> Result<(), Rejection> {
        let want = spec.host();
        let roomy: Vec<&Node> = candidates
            .iter()
            .filter(|n| n.host_allocatable().holds(want))
            .copied()
            .collect();
        if roomy.is_empty() {
            let what = if spec.gpus == 0 {
                "that meets its constraints".to_string()
            } else {
                format!("with {} such GPUs", spec.gpus)
            };
            let most_cpu = candidates
                .iter()
                .map(|n| n.cpu_millicores)
                .max()
                .unwrap_or(0);
            let most_mem = candidates.iter().map(|n| n.memory_bytes).max().unwrap_or(0);
            return Err(Rejection::Infeasible(if want.cpu_millicores > most_cpu {
                format!(
                        "cpu_millicores: it asks for {} per task, but no node {what} has more than {} allocatable",
                        cpu(want.cpu_millicores),
                        cpu(most_cpu)
                    )
            } else if want.memory_bytes > most_mem {
                format!(
                        "memory_bytes: it asks for {} per task, but no node {what} has more than {} allocatable",
                        memory(want.memory_bytes),
                        memory(most_mem)
                    )
            } else {
                format!(
                    "no node {what} has both {} and {} allocatable",
                    cpu(want.cpu_millicores),
                    memory(want.memory_bytes)
                )
            }));
        }
        if spec.nodes <= 1 {
            return Ok(());
        }
        self.check_gang_feasible(spec, &roomy)
    }

    /// Checks a request against what the pool's nodes have at all: every
    /// GPU model and class it names exists on some node, and no node is
    /// smaller than one task's CPU or memory. The API asks this before it
    /// writes a submission, so an absurd request is refused as bad input
    /// (the message names the field and the largest node); `apply` asks it
    /// again.
    pub fn check_request(&self, spec: &JobSpec) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Ok(());
        }
        let c = &spec.constraints;
        for (field, names, of) in [
            ("gpu_models", &c.gpu_models, true),
            ("gpu_classes", &c.gpu_classes, false),
        ] {
            let mut known: Vec<&str> = self
                .nodes()
                .flat_map(|n| {
                    n.gpus.iter().map(move |g| {
                        if of {
                            g.info.model.as_str()
                        } else {
                            n.gpu_class(g)
                        }
                    })
                })
                .collect();
            known.sort_unstable();
            known.dedup();
            if let Some(unknown) = names.iter().find(|m| !known.contains(&m.as_str())) {
                let kind = if of { "model" } else { "class" };
                let pool = if known.is_empty() {
                    "the pool has no GPUs".to_string()
                } else {
                    format!("the pool has {}", known.join(", "))
                };
                return Err(format!(
                    "{field}: no node has GPUs of {kind} {unknown} ({pool})"
                ));
            }
        }
        let largest = |key: fn(&Node) -> u64| {
            self.nodes()
                .max_by_key(|n| (key(n), std::cmp::Reverse(n.name.as_str())))
                .map(|n| (key(n), n.name.as_str()))
                .unwrap_or((0, ""))
        };
        let (most, node) = largest(|n| n.cpu_millicores);
        if spec.cpu_millicores > most {
            return Err(format!(
                "cpu_millicores: it asks for {} per task, more than any node has; the largest node ({node}) has {} allocatable",
                cpu(spec.cpu_millicores),
                cpu(most)
            ));
        }
        let (most, node) = largest(|n| n.memory_bytes);
        if spec.memory_bytes > most {
            return Err(format!(
                "memory_bytes: it asks for {} per task, more than any node has; the largest node ({node}) has {} allocatable",
                memory(spec.memory_bytes),
                memory(most)
            ));
        }
        Ok(())
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
        && c.allows_model(&g.info.model)
        && c.allows_class(node.gpu_class(g))
        && g.info.memory_bytes >= c.min_gpu_memory_bytes
}

/// Whether the node meets the job's node constraints (site, data level).
pub fn fits_node(c: &Constraints, node: &Node) -> bool {
    node.labels.data_level >= c.data_level && c.site.as_deref().is_none_or(|s| node.site() == s)
}

/// Bytes of memory for people: whole GiB when exact, else bytes.
pub fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{bytes} bytes")
    }
}

/// CPU thousandths for people: whole cores when exact, else millicores.
pub fn cpu(millicores: u64) -> String {
    match millicores {
        1000 => "1 CPU core".to_string(),
        m if m.is_multiple_of(1000) => format!("{} CPU cores", m / 1000),
        m => format!("{m} CPU millicores"),
    }
}

fn describe(c: &Constraints) -> String {
    let mut parts = vec![];
    let kind = c.describe_gpu_kind();
    if !kind.is_empty() {
        parts.push(kind);
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
