//! A job's host resources and GPU kinds as the API resolves them: CPU and
//! memory requests with the pool's defaults per GPU filled in, so the log
//! holds the real numbers (docs/policy.md, "Host resources"), and GPU
//! model and class sets in their one stored form (sorted, no duplicates,
//! the single `gpu_model`/`gpu_class` joined in).

use edupool_proto::v1 as pb;

use super::convert::{label, SpecError};
use crate::state::WHOLE_GPU;

/// The pool's defaults for a job that gives no CPU or memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostDefaults {
    /// Thousandths of a core per whole GPU asked for.
    pub cpu_per_gpu: u64,
    /// Bytes of host memory per whole GPU asked for.
    pub memory_per_gpu: u64,
}

impl Default for HostDefaults {
    fn default() -> Self {
        HostDefaults {
            cpu_per_gpu: DEFAULT_CPU_PER_GPU,
            memory_per_gpu: DEFAULT_MEMORY_PER_GPU,
        }
    }
}

/// 4 cores and 16 GiB per GPU unless the pool says otherwise: a quarter
/// or less of a common 8-GPU node's cores and memory per GPU.
pub const DEFAULT_CPU_PER_GPU: u64 = 4_000;
pub const DEFAULT_MEMORY_PER_GPU: u64 = 16 << 30;

/// Far above any node, low enough that a unit slip (cores for
/// millicores, bytes for GiB) is caught before the pool is asked.
pub const MAX_CPU_MILLICORES: u64 = 100_000_000;
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Most models or classes one set may name.
pub const MAX_KINDS: usize = 64;

/// One task's CPU and memory, the pool's defaults filled in: per GPU
/// (thousandths of GPUs for a fraction) for a GPU job; a CPU-only job
/// (`gpus = 0`) must ask for CPU, and its memory defaults to the pool's
/// memory per core (memory per GPU over CPU per GPU).
pub fn host_request(spec: &pb::JobSpec, defaults: HostDefaults) -> Result<(u64, u64), SpecError> {
    if spec.cpu_millicores > MAX_CPU_MILLICORES {
        return Err(SpecError::CpuTooLarge(spec.cpu_millicores));
    }
    if spec.memory_bytes > MAX_MEMORY_BYTES {
        return Err(SpecError::MemoryTooLarge(spec.memory_bytes));
    }
    if spec.gpus == 0 {
        if spec.cpu_millicores == 0 {
            return Err(SpecError::NothingRequested);
        }
        let memory = match spec.memory_bytes {
            0 => scale(
                spec.cpu_millicores,
                defaults.memory_per_gpu,
                defaults.cpu_per_gpu,
            ),
            m => m,
        };
        return Ok((spec.cpu_millicores, memory));
    }
    let per_gpu = if spec.gpu_fraction == 0 {
        WHOLE_GPU
    } else {
        spec.gpu_fraction
    };
    let gpu_milli = u64::from(spec.gpus) * u64::from(per_gpu);
    let or_default = |given: u64, per: u64| match given {
        0 => scale(gpu_milli, per, u64::from(WHOLE_GPU)),
        g => g,
    };
    Ok((
        or_default(spec.cpu_millicores, defaults.cpu_per_gpu),
        or_default(spec.memory_bytes, defaults.memory_per_gpu),
    ))
}

/// `amount * per / of`, exact, saturating (0 when `of` is 0).
fn scale(amount: u64, per: u64, of: u64) -> u64 {
    if of == 0 {
        return 0;
    }
    let v = u128::from(amount) * u128::from(per) / u128::from(of);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The GPU model and class sets of a spec in their stored form: the
/// single field joined into its set, each name checked, sorted, without
/// duplicates. A job without GPUs may name none.
pub fn gpu_kinds(spec: &mut pb::JobSpec) -> Result<(Vec<String>, Vec<String>), SpecError> {
    let models = kind_set(
        "gpu_models",
        std::mem::take(&mut spec.gpu_model),
        std::mem::take(&mut spec.gpu_models),
    )?;
    let classes = kind_set(
        "gpu_classes",
        std::mem::take(&mut spec.gpu_class),
        std::mem::take(&mut spec.gpu_classes),
    )?;
    if spec.gpus == 0 {
        let field = match (models.is_empty(), classes.is_empty()) {
            (false, _) => Some("gpu_models"),
            (_, false) => Some("gpu_classes"),
            _ if spec.min_gpu_memory_bytes > 0 => Some("min_gpu_memory_bytes"),
            _ => None,
        };
        if let Some(field) = field {
            return Err(SpecError::GpuConstraintWithoutGpus(field));
        }
    }
    Ok((models, classes))
}

fn kind_set(
    field: &'static str,
    single: String,
    set: Vec<String>,
) -> Result<Vec<String>, SpecError> {
    if set.len() > MAX_KINDS {
        return Err(SpecError::TooManyKinds {
            field,
            count: set.len(),
        });
    }
    let mut all = Vec::with_capacity(set.len() + 1);
    for name in std::iter::once(single).chain(set) {
        if let Some(name) = label(field, name)? {
            all.push(name);
        }
    }
    all.sort();
    all.dedup();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert::{job_spec, JobLimits};

    fn spec(f: impl FnOnce(&mut pb::JobSpec)) -> Result<crate::state::JobSpec, SpecError> {
        let mut s = pb::JobSpec {
            command: vec!["true".into()],
            gpus: 2,
            ..Default::default()
        };
        f(&mut s);
        job_spec(Some(s), &JobLimits::default())
    }

    #[test]
    fn a_gpu_job_without_host_requests_gets_the_pools_defaults_per_gpu() {
        let s = spec(|_| {}).unwrap();
        assert_eq!((s.cpu_millicores, s.memory_bytes), (8_000, 32 << 30));
        // A fraction gets its share of one GPU's defaults.
        let s = spec(|s| {
            s.gpus = 1;
            s.gpu_fraction = 250;
        })
        .unwrap();
        assert_eq!((s.cpu_millicores, s.memory_bytes), (1_000, 4 << 30));
        // What is given is kept.
        let s = spec(|s| {
            s.cpu_millicores = 500;
            s.memory_bytes = 1 << 30;
        })
        .unwrap();
        assert_eq!((s.cpu_millicores, s.memory_bytes), (500, 1 << 30));
    }

    #[test]
    fn a_cpu_only_job_must_ask_for_cpu_and_gets_memory_per_core() {
        assert_eq!(spec(|s| s.gpus = 0), Err(SpecError::NothingRequested));
        let s = spec(|s| {
            s.gpus = 0;
            s.cpu_millicores = 2_000;
        })
        .unwrap();
        // 16 GiB per GPU over 4 cores per GPU: 4 GiB per core.
        assert_eq!(
            (s.gpus, s.cpu_millicores, s.memory_bytes),
            (0, 2_000, 8 << 30)
        );
        let err = spec(|s| {
            s.gpus = 0;
            s.cpu_millicores = 1_000;
            s.gpu_models = vec!["A100-80GB".into()];
        })
        .unwrap_err();
        assert_eq!(err, SpecError::GpuConstraintWithoutGpus("gpu_models"));
    }

    #[test]
    fn absurd_host_requests_are_refused_naming_the_field() {
        let err = spec(|s| s.memory_bytes = u64::MAX).unwrap_err();
        assert!(err.to_string().starts_with("memory_bytes is "), "{err}");
        let err = spec(|s| s.cpu_millicores = u64::MAX).unwrap_err();
        assert!(err.to_string().starts_with("cpu_millicores is "), "{err}");
    }

    #[test]
    fn gpu_kinds_are_stored_as_sorted_sets_with_the_single_fields_joined() {
        let s = spec(|s| {
            s.gpu_model = "V100-32GB".into();
            s.gpu_models = vec!["V100-16GB".into(), "V100-32GB".into()];
            s.gpu_class = "V100".into();
        })
        .unwrap();
        let c = &s.constraints;
        assert_eq!(c.gpu_models, ["V100-16GB", "V100-32GB"]);
        assert_eq!(c.gpu_classes, ["V100"]);
        assert_eq!(
            (c.gpu_model.as_deref(), c.gpu_class.as_deref()),
            (None, None)
        );
        let err = spec(|s| s.gpu_models = vec!["A100".into(), "bad name".into()]).unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::BadLabel {
                    field: "gpu_models",
                    ..
                }
            ),
            "{err}"
        );
    }
}
