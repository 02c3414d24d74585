//! The command line as a whole: every group parses as documented.

use std::time::Duration;

use clap::{CommandFactory, Parser};
use edupool_proto::v1::{JobSpec, JobState};

use super::{
    job::{build_spec, new_request_id},
    usage::ReportBy,
    Command, JobCommand, PriceCommand, UsageCommand,
};
use crate::{Cli, Format};

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("edupoolctl").chain(args.iter().copied()))
}

fn submit_spec(args: &[&str]) -> anyhow::Result<JobSpec> {
    let cli = parse(args)?;
    let Command::Job(JobCommand::Submit(submit)) = cli.command else {
        panic!("not a submit")
    };
    build_spec(*submit)
}

#[test]
fn inline_submit_builds_a_spec() {
    let spec = submit_spec(&[
        "job",
        "submit",
        "--gpus",
        "2",
        "--name",
        "t1",
        "--class",
        "training",
        "--walltime",
        "1h",
        "--grace-period",
        "30s",
        "--env",
        "A=1",
        "-e",
        "B=x=y",
        "--on-node-lost",
        "fail",
        "--max-retries",
        "2",
        "--",
        "python3",
        "train.py",
        "--epochs",
        "3",
    ])
    .unwrap();
    assert_eq!(spec.command, ["python3", "train.py", "--epochs", "3"]);
    assert_eq!(spec.gpus, 2);
    assert_eq!(spec.name, "t1");
    assert_eq!(spec.class(), edupool_proto::v1::JobClass::Training);
    assert_eq!(spec.walltime_seconds, 3600);
    assert_eq!(spec.grace_period_seconds, 30);
    assert_eq!(spec.env["A"], "1");
    assert_eq!(spec.env["B"], "x=y");
    assert_eq!(spec.on_node_lost(), edupool_proto::v1::OnNodeLost::Fail);
    assert_eq!(spec.max_retries, 2);
}

#[test]
fn inline_submit_needs_gpus_and_a_command() {
    let err = parse(&["job", "submit", "--", "true"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let err = parse(&["job", "submit", "--gpus", "1"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let err = parse(&["job", "submit", "--gpus", "1", "--class", "gold", "--", "x"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    let err = submit_spec(&["job", "submit", "--gpus", "0", "--", "x"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "gpus must be at least 1, or 0 with cpu (a CPU-only job)"
    );
}

#[test]
fn flags_override_the_job_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, "command: [a]\ngpus: 1\nenv: { X: '1' }\n").unwrap();
    let path = path.to_str().unwrap();
    let spec = submit_spec(&["job", "submit", "-f", path, "--gpus", "4", "-e", "Y=2"]).unwrap();
    assert_eq!(spec.command, ["a"]);
    assert_eq!(spec.gpus, 4);
    assert_eq!(spec.env.len(), 2);
}

#[test]
fn an_image_comes_from_the_flag_or_the_job_file() {
    let inline = submit_spec(&[
        "job",
        "submit",
        "--gpus",
        "1",
        "--image",
        "pytorch-2.3",
        "--",
        "a",
    ]);
    assert_eq!(inline.unwrap().image, "pytorch-2.3");
    let host = submit_spec(&["job", "submit", "--gpus", "1", "--", "a"]).unwrap();
    assert_eq!(host.image, "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, "command: [a]\ngpus: 1\nimage: busybox\n").unwrap();
    let path = path.to_str().unwrap();
    assert_eq!(
        submit_spec(&["job", "submit", "-f", path]).unwrap().image,
        "busybox"
    );
    let spec = submit_spec(&["job", "submit", "-f", path, "--image", "other"]).unwrap();
    assert_eq!(spec.image, "other");
    // The reads: repeatable.
    for read in [&["image", "list"][..], &["node", "show", "gpu-01"]] {
        assert!(parse(read).unwrap().command.is_repeatable(), "{read:?}");
    }
}

#[test]
fn secret_env_comes_from_flags_and_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.env");
    std::fs::write(&path, "FROM_FILE=f\nBOTH=file\n").unwrap();
    let path = path.to_str().unwrap();
    let spec = submit_spec(&[
        "job",
        "submit",
        "--gpus",
        "1",
        "--secret-env-file",
        path,
        "--secret-env",
        "BOTH=flag",
        "--",
        "true",
    ])
    .unwrap();
    assert_eq!(spec.secret_env["FROM_FILE"], "f");
    assert_eq!(spec.secret_env["BOTH"], "flag", "a flag overrides the file");
    assert!(spec.env.is_empty());
    let err = parse(&[
        "job",
        "submit",
        "--gpus",
        "1",
        "--secret-env",
        "NOVALUE",
        "--",
        "x",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
}

#[test]
fn deadlines_and_request_ids_parse_and_only_safe_commands_repeat() {
    let cli = parse(&[
        "--timeout",
        "5s",
        "--attempt-timeout",
        "500ms",
        "job",
        "submit",
        "--request-id",
        "run-7",
        "--gpus",
        "1",
        "--",
        "true",
    ])
    .unwrap();
    assert_eq!(cli.global.timeout, Duration::from_secs(5));
    assert_eq!(cli.global.attempt_timeout, Duration::from_millis(500));
    assert!(cli.command.is_repeatable());
    let Command::Job(JobCommand::Submit(args)) = &cli.command else {
        panic!("not a submit")
    };
    assert_eq!(args.request_id.as_deref(), Some("run-7"));
    let defaults = parse(&["job", "list"]).unwrap();
    assert_eq!(defaults.global.timeout, Duration::from_secs(30));
    assert!(defaults.command.is_repeatable());
    for write in [
        &["job", "cancel", "j-1"][..],
        &["node", "drain", "n1"],
        &["tenant", "create", "x"],
    ] {
        assert!(!parse(write).unwrap().command.is_repeatable(), "{write:?}");
    }
    let fresh = new_request_id();
    assert_ne!(fresh, new_request_id());
    assert!(fresh.len() <= 128 && fresh.starts_with("ctl-"), "{fresh}");
}

#[test]
fn global_flags_and_list_filters() {
    let cli = parse(&[
        "job",
        "list",
        "--state",
        "pending,running",
        "--state",
        "failed",
        "--limit",
        "5",
        "--endpoint",
        "a:1,b:2",
        "-o",
        "json",
    ])
    .unwrap();
    assert_eq!(cli.global.endpoint, ["a:1", "b:2"]);
    assert!(matches!(cli.global.output, Format::Json));
    let Command::Job(JobCommand::List { state, limit, .. }) = cli.command else {
        panic!("not a list")
    };
    assert_eq!(
        state,
        [JobState::Pending, JobState::Running, JobState::Failed]
    );
    assert_eq!(limit, Some(5));
    assert!(parse(&["job", "list", "--state", "done"]).is_err());
}

#[test]
fn usage_price_and_budget_commands_parse() {
    let cli = parse(&[
        "usage",
        "report",
        "--tenant",
        "uni-b",
        "--from",
        "2026-11-01",
        "--to",
        "2026-12-01T00:00:00Z",
        "--by",
        "model",
        "-o",
        "csv",
    ])
    .unwrap();
    assert!(matches!(cli.global.output, Format::Csv));
    let Command::Usage(UsageCommand::Report { tenant, range, by }) = cli.command else {
        panic!("not a usage report")
    };
    assert_eq!(tenant.as_deref(), Some("uni-b"));
    assert!(matches!(by, ReportBy::Model));
    assert!(range.start_ms() < range.to_ms());
    // Without --from, a report covers this month so far.
    let cli = parse(&["usage", "report"]).unwrap();
    let Command::Usage(UsageCommand::Report { range, .. }) = cli.command else {
        panic!("not a usage report")
    };
    assert_eq!(range.from, None);
    assert!(range.start_ms() <= range.to_ms());
    let cli = parse(&[
        "price",
        "set",
        "--gpu-hour",
        "A100-80GB:batch=6",
        "--gpu-hour",
        "A100-80GB=8",
        "--equity-discount",
        "uni-b=20",
    ])
    .unwrap();
    let Command::Price(PriceCommand::Set {
        gpu_hour,
        equity_discount,
        ..
    }) = cli.command
    else {
        panic!("not price set")
    };
    assert_eq!(gpu_hour.len(), 2);
    assert_eq!(equity_discount[0].percent, 20);
    assert!(parse(&["price", "set", "--energy-per-kwh", "-1"]).is_err());
    assert!(parse(&["budget", "set", "uni-b", "--hard", "5", "--remove"]).is_err());
}

#[test]
fn host_resources_and_gpu_kind_sets_reach_the_spec() {
    let spec = submit_spec(&[
        "job",
        "submit",
        "--gpus",
        "1",
        "--cpu",
        "500m",
        "--memory",
        "16GiB",
        "--gpu-model",
        "V100-16GB,V100-32GB",
        "--gpu-class",
        "V100",
        "--",
        "x",
    ])
    .unwrap();
    assert_eq!((spec.cpu_millicores, spec.memory_bytes), (500, 16 << 30));
    assert_eq!(spec.gpu_models, ["V100-16GB", "V100-32GB"]);
    assert_eq!(spec.gpu_classes, ["V100"]);
    assert_eq!((spec.gpu_model.as_str(), spec.gpu_class.as_str()), ("", ""));
    // A CPU-only job: no GPUs, some CPU.
    let spec = submit_spec(&["job", "submit", "--gpus", "0", "--cpu", "2", "--", "x"]).unwrap();
    assert_eq!(
        (spec.gpus, spec.cpu_millicores, spec.memory_bytes),
        (0, 2000, 0)
    );
    let err = submit_spec(&[
        "job", "submit", "--gpus", "1", "--memory", "lots", "--", "x",
    ])
    .unwrap_err();
    assert!(
        err.to_string().starts_with("memory: 'lots' is not"),
        "{err}"
    );
}
