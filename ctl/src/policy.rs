//! The policy commands: tenants' quotas, shares and class caps, node
//! labels, and `job explain`. One method per command, like
//! [`commands`](crate::commands), printing a table or JSON.

use std::io::Write;

use edupool_proto::v1::{
    ExplainJobRequest, GetTenantRequest, GetTenantResponse, JobClass, LabelNodeRequest, Node,
    NodeLabels, Quota, SetClassCapRequest, SetTenantQuotaRequest, SetTenantShareRequest,
    TenantPolicyView,
};
use edupool_table::Table;
use serde::Serialize;

use crate::commands::{CommandError, Ctl};
use crate::job_state_name;
use crate::output::{self, non_empty, OutputFormat};

/// A GPU count an admin sets, or the rule's default (`-1` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Gpus(u32),
    Default,
}

impl Count {
    fn wire(self) -> i64 {
        match self {
            Count::Gpus(n) => i64::from(n),
            Count::Default => -1,
        }
    }

    /// Parses a number of GPUs, or one of the words that mean the default.
    pub fn parse(text: &str, default_words: &[&str]) -> Result<Count, String> {
        let t = text.trim().to_ascii_lowercase();
        if default_words.contains(&t.as_str()) {
            return Ok(Count::Default);
        }
        t.parse::<u32>().map(Count::Gpus).map_err(|_| {
            format!(
                "'{text}' is not a number of GPUs (0 or more) or one of: {}",
                default_words.join(", ")
            )
        })
    }
}

/// A tenant's policy and capacity, for scripts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantPolicyJson {
    pub name: String,
    pub classes: Vec<ClassJson>,
    pub weight: f64,
    pub equity: f64,
    pub usage_gpu_seconds: f64,
    pub usage_share: f64,
    pub pending_jobs: u32,
    pub running_jobs: u32,
    pub class_caps: std::collections::BTreeMap<String, u32>,
    pub queue: Vec<String>,
    /// Its jobs run as uid = gid = the node's `--tenant-uid-base` plus this.
    pub uid_offset: u32,
    /// CPU (thousandths of a core) and host memory (bytes) its placed
    /// jobs hold.
    pub cpu_millicores_in_use: u64,
    pub memory_bytes_in_use: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassJson {
    pub gpu_class: String,
    pub guaranteed: f64,
    pub in_use: f64,
    pub borrowed: f64,
    pub lent: f64,
    /// `null`: follows the GPUs of the nodes it owns.
    pub guarantee_override: Option<i64>,
    /// `null`: unlimited.
    pub borrow_limit: Option<i64>,
}

impl From<&TenantPolicyView> for TenantPolicyJson {
    fn from(t: &TenantPolicyView) -> Self {
        TenantPolicyJson {
            name: t.name.clone(),
            classes: t
                .classes
                .iter()
                .map(|c| ClassJson {
                    gpu_class: c.gpu_class.clone(),
                    guaranteed: c.guaranteed,
                    in_use: c.in_use,
                    borrowed: c.borrowed,
                    lent: c.lent,
                    guarantee_override: (c.guarantee_override >= 0).then_some(c.guarantee_override),
                    borrow_limit: (c.borrow_limit >= 0).then_some(c.borrow_limit),
                })
                .collect(),
            weight: f64::from(t.weight_milli) / 1000.0,
            equity: f64::from(t.equity_milli) / 1000.0,
            usage_gpu_seconds: t.usage_gpu_seconds,
            usage_share: t.usage_share,
            pending_jobs: t.pending_jobs,
            running_jobs: t.running_jobs,
            class_caps: t.class_caps.clone().into_iter().collect(),
            queue: t.queue.clone(),
            uid_offset: t.uid_offset,
            cpu_millicores_in_use: t.cpu_millicores_in_use,
            memory_bytes_in_use: t.memory_bytes_in_use,
        }
    }
}

/// `tenant show`: the numbers first, then one row per GPU class.
pub fn tenant_detail(t: &TenantPolicyView) -> String {
    let mut out = String::new();
    let caps: Vec<String> = {
        let mut c: Vec<_> = t.class_caps.iter().collect();
        c.sort();
        c.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    };
    let queue = match t.queue.len() {
        0 => "-".to_owned(),
        n if n <= 8 => t.queue.join(", "),
        n => format!("{}, ... ({n} in all)", t.queue[..8].join(", ")),
    };
    let lines = [
        ("tenant", t.name.clone()),
        (
            "share",
            format!(
                "weight {} x equity {}",
                f64::from(t.weight_milli) / 1000.0,
                f64::from(t.equity_milli) / 1000.0
            ),
        ),
        (
            "usage",
            format!(
                "{:.0} GPU-seconds (decayed), {:.1}% of the pool's",
                t.usage_gpu_seconds,
                t.usage_share * 100.0
            ),
        ),
        (
            "jobs",
            format!("{} running, {} pending", t.running_jobs, t.pending_jobs),
        ),
        (
            "cpu/memory",
            format!(
                "{} CPU, {} memory in use",
                edupool_table::units::cpu(t.cpu_millicores_in_use),
                edupool_table::units::memory(t.memory_bytes_in_use)
            ),
        ),
        (
            "class caps",
            if caps.is_empty() {
                "-".into()
            } else {
                caps.join(", ")
            },
        ),
        ("queue", queue),
        (
            "identity",
            match t.uid_offset {
                0 => "uid offset not assigned yet (the scheduler assigns it shortly)".to_owned(),
                n => format!(
                    "uid offset {n}: its jobs run as uid = gid = the node's tenant uid base + {n}"
                ),
            },
        ),
    ];
    for (k, v) in lines {
        out.push_str(&format!("{:<11} {v}\n", format!("{k}:")));
    }
    if t.classes.is_empty() {
        out.push_str("no GPUs guaranteed, used or lent\n");
        return out;
    }
    out.push('\n');
    let mut table = Table::new([
        "CLASS",
        "GUARANTEED",
        "IN USE",
        "BORROWED",
        "LENT",
        "QUOTA",
        "BORROW LIMIT",
    ]);
    let gpus = |g: f64| {
        if g.fract() == 0.0 {
            format!("{g:.0}")
        } else {
            format!("{g:.3}")
        }
    };
    for c in &t.classes {
        table.row([
            c.gpu_class.clone(),
            gpus(c.guaranteed),
            gpus(c.in_use),
            gpus(c.borrowed),
            gpus(c.lent),
            if c.guarantee_override < 0 {
                "contribution".into()
            } else {
                c.guarantee_override.to_string()
            },
            if c.borrow_limit < 0 {
                "unlimited".into()
            } else {
                c.borrow_limit.to_string()
            },
        ]);
    }
    out.push_str(&table.render());
    out
}

#[derive(Serialize)]
struct ExplainJson<'a> {
    id: &'a str,
    state: &'a str,
    explanation: &'a str,
}

impl<W: Write> Ctl<W> {
    /// `job explain`: why the job is where it is.
    pub async fn explain_job(&mut self, id: &str) -> Result<String, CommandError> {
        let r = self
            .clients
            .jobs
            .explain_job(ExplainJobRequest { id: id.to_owned() })
            .await?
            .into_inner();
        let job = r.job.ok_or(CommandError::MissingField("job"))?;
        let state = job_state_name(job.state);
        match self.format {
            OutputFormat::Table => writeln!(self.out, "{} is {state}: {}", job.id, r.explanation)?,
            OutputFormat::Json => writeln!(
                self.out,
                "{}",
                output::to_json(&ExplainJson {
                    id: &job.id,
                    state,
                    explanation: &r.explanation,
                })?
            )?,
        }
        self.out.flush()?;
        Ok(r.explanation)
    }

    /// `node label`: replaces the node's labels; prints the node.
    pub async fn label_node(
        &mut self,
        name: &str,
        labels: NodeLabels,
    ) -> Result<Node, CommandError> {
        let node = self
            .clients
            .admin
            .label_node(LabelNodeRequest {
                name: name.to_owned(),
                labels: Some(labels),
            })
            .await?
            .into_inner()
            .node
            .ok_or(CommandError::MissingField("node"))?;
        let l = node.labels.clone().unwrap_or_default();
        match self.format {
            OutputFormat::Table => writeln!(
                self.out,
                "node {}: owner {}, site {}, data level {}, GPU class {}",
                node.name,
                non_empty(&l.owner).unwrap_or_else(|| "none".into()),
                non_empty(&l.site).unwrap_or_else(|| "default".into()),
                l.data_level,
                non_empty(&l.gpu_class).unwrap_or_else(|| "from the model".into()),
            )?,
            OutputFormat::Json => writeln!(
                self.out,
                "{}",
                output::to_json(&output::NodeView::from(&node))?
            )?,
        }
        self.out.flush()?;
        Ok(node)
    }

    /// `tenant show`.
    pub async fn show_tenant(&mut self, name: &str) -> Result<TenantPolicyView, CommandError> {
        let reply = self
            .clients
            .admin
            .get_tenant(GetTenantRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        self.print_tenant(reply)
    }

    /// `tenant set-quota`.
    pub async fn set_quota(
        &mut self,
        tenant: &str,
        gpu_class: &str,
        guaranteed: Count,
        borrow_limit: Count,
    ) -> Result<TenantPolicyView, CommandError> {
        let reply = self
            .clients
            .admin
            .set_tenant_quota(SetTenantQuotaRequest {
                tenant: tenant.to_owned(),
                quota: Some(Quota {
                    gpu_class: gpu_class.to_owned(),
                    guaranteed: guaranteed.wire(),
                    borrow_limit: borrow_limit.wire(),
                }),
            })
            .await?
            .into_inner();
        self.print_tenant(reply)
    }

    /// `tenant set-share`: weights in thousandths; 0 keeps the current one.
    pub async fn set_share(
        &mut self,
        tenant: &str,
        weight_milli: u32,
        equity_milli: u32,
    ) -> Result<TenantPolicyView, CommandError> {
        let reply = self
            .clients
            .admin
            .set_tenant_share(SetTenantShareRequest {
                tenant: tenant.to_owned(),
                weight_milli,
                equity_milli,
            })
            .await?
            .into_inner();
        self.print_tenant(reply)
    }

    /// `tenant set-cap`.
    pub async fn set_class_cap(
        &mut self,
        tenant: &str,
        job_class: JobClass,
        max_gpus: Count,
    ) -> Result<TenantPolicyView, CommandError> {
        let reply = self
            .clients
            .admin
            .set_class_cap(SetClassCapRequest {
                tenant: tenant.to_owned(),
                job_class: job_class as i32,
                max_gpus: max_gpus.wire(),
            })
            .await?
            .into_inner();
        self.print_tenant(reply)
    }

    /// Prints the tenant a reply carries and returns it.
    fn print_tenant(&mut self, reply: GetTenantResponse) -> Result<TenantPolicyView, CommandError> {
        let t = reply.tenant.ok_or(CommandError::MissingField("tenant"))?;
        match self.format {
            OutputFormat::Table => self.out.write_all(tenant_detail(&t).as_bytes())?,
            OutputFormat::Json => writeln!(
                self.out,
                "{}",
                output::to_json(&TenantPolicyJson::from(&t))?
            )?,
        }
        self.out.flush()?;
        Ok(t)
    }
}

/// A weight such as `1.5` in thousandths (`1500`).
pub fn parse_weight(text: &str) -> Result<u32, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number, e.g. 1.5"))?;
    if !(0.001..=1000.0).contains(&v) {
        return Err(format!("{v} is out of range; use 0.001 to 1000"));
    }
    Ok((v * 1000.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_show_explains_the_uid_offset() {
        let mut t = TenantPolicyView {
            name: "zju".into(),
            uid_offset: 3,
            ..Default::default()
        };
        let shown = tenant_detail(&t);
        assert!(
            shown.contains("\nidentity:   uid offset 3: its jobs run as uid = gid = the node's tenant uid base + 3\n"),
            "{shown}"
        );
        assert_eq!(TenantPolicyJson::from(&t).uid_offset, 3);
        t.uid_offset = 0;
        assert!(tenant_detail(&t).contains("uid offset not assigned yet"));
    }

    #[test]
    fn counts_and_weights_parse() {
        assert_eq!(Count::parse("4", &["auto"]), Ok(Count::Gpus(4)));
        assert_eq!(Count::parse("AUTO", &["auto"]), Ok(Count::Default));
        assert!(Count::parse("-2", &["auto"])
            .unwrap_err()
            .contains("not a number"));
        assert_eq!(parse_weight("1.5"), Ok(1500));
        assert!(parse_weight("0").is_err());
    }
}
