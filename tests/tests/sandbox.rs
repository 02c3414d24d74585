//! Container jobs in their sandboxes, against the real runtime (crun), the
//! node's real cgroups and a tiny image built here from a static busybox:
//! GPUs fenced by device nodes (fake ones, made with `mknod` in a folder the
//! runner uses as its device root), memory and CPU held to the request,
//! tenants apart from each other, no network for data level 2, and a
//! restarted agent leaves nothing behind.
//!
//! They need root, crun and busybox-static (`.ci/run` installs both).
//! Without them a test says why and passes, except under `CI=true`, where
//! that is a failure. The runner is driven directly, as the agent drives
//! it; every wait is a poll with a deadline.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edupool_agent::images::ImageStore;
use edupool_agent::inventory::GpuInfo;
use edupool_agent::runner::container::{devices, CgroupVersion, Cgroups, ContainerDriver};
use edupool_agent::runner::{
    ExitOutcome, JobEvents, JobExit, Runner, RunnerConfig, StartOutcome, StartRequest,
    RESTART_REASON,
};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(60);
const UID_BASE: u32 = 230_000;
const IMAGE: &str = "busybox";

/// Why the sandbox cannot be tested here; `None` when it can.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    if edupool_agent::runner::container::find_runtime(None).is_err() {
        return Some("crun is not installed (apt-get install crun)".into());
    }
    match fs::read("/bin/busybox") {
        Err(_) => return Some("no /bin/busybox (apt-get install busybox-static)".into()),
        Ok(elf) if !is_static_elf(&elf) => {
            return Some("/bin/busybox is not static (apt-get install busybox-static)".into())
        }
        Ok(_) => {}
    }
    if Cgroups::detect(Path::new("/sys/fs/cgroup")).is_err() {
        return Some("no usable cgroup v1 or v2 at /sys/fs/cgroup".into());
    }
    None
}

/// A 64-bit little-endian ELF without a program interpreter (PT_INTERP).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count).all(|i| {
        let at = phoff + i * size;
        elf.get(at..at + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

/// True when the test may run; otherwise prints why, and fails under CI.
fn ready(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: the sandbox tests need root, crun and busybox-static in CI: {why}")
        }
        Some(why) => {
            println!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// A work directory, an image store with a busybox image, fake GPU device
/// nodes for GPUs 0..3 (`/dev/nvidia0..2` and `nvidiactl`), and the
/// driver that uses them.
struct Node {
    dir: TempDir,
    driver: Arc<ContainerDriver>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        // Tenants' uids must be able to pass through to their job folders.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let rootfs = dir.path().join("images").join(IMAGE).join("rootfs");
        build_busybox_image(&rootfs);
        let dev = dir.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        for (name, minor) in [
            ("nvidia0", 0),
            ("nvidia1", 1),
            ("nvidia2", 2),
            ("nvidiactl", 255),
        ] {
            nix::sys::stat::mknod(
                &dev.join(name),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(195, minor),
            )
            .unwrap();
        }
        let gpus: Vec<GpuInfo> = (0..3)
            .map(|i| GpuInfo::basic(format!("GPU-{i}"), i, "A100-80GB".into(), 80 << 30))
            .collect();
        let driver = ContainerDriver {
            runtime: edupool_agent::runner::container::find_runtime(None).unwrap(),
            version: "crun".into(),
            images: ImageStore::new(dir.path().join("images")),
            cgroups: Cgroups::detect(Path::new("/sys/fs/cgroup")).unwrap(),
            cgroup_parent: PathBuf::from("edupool-test"),
            tenant_uid_base: UID_BASE,
            device_root: dev,
            driver_files: vec![],
            egress_levels: vec![],
            pids_limit: 256,
            gpu_units: devices::gpu_units(&gpus),
        };
        Node {
            dir,
            driver: Arc::new(driver),
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn runner(&self) -> (Runner, JobEvents) {
        fs::create_dir_all(self.work_dir().join("jobs")).unwrap();
        Runner::new(RunnerConfig {
            containers: Some(Arc::clone(&self.driver)),
            allow_host_jobs: false,
            ..RunnerConfig::new(self.work_dir())
        })
    }
}

/// `/bin/busybox` and a link per applet, and the folders mounts go on.
fn build_busybox_image(rootfs: &Path) {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    for dir in ["proc", "dev", "sys", "tmp", "work", "etc"] {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
}

/// A container job running `script` in busybox's `sh`.
fn job(job_id: &str, script: &str) -> StartRequest {
    StartRequest {
        job_id: job_id.into(),
        tenant: "uni-a".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        grace_period: Some(Duration::from_secs(1)),
        attempt: 1,
        image: Some(IMAGE.into()),
        tenant_uid_offset: 1,
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The exits of `jobs`, in that order.
async fn exits(events: &mut JobEvents, jobs: &[&str]) -> Vec<JobExit> {
    let mut found: BTreeMap<String, JobExit> = BTreeMap::new();
    tokio::time::timeout(DEADLINE, async {
        while jobs.iter().any(|j| !found.contains_key(*j)) {
            let report = events.recv().await.expect("the runner is alive");
            if let Some(exit) = report.exit() {
                found.insert(report.job_id.clone(), exit.clone());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for the exits of {jobs:?}: have {found:?}"));
    jobs.iter().map(|j| found[*j].clone()).collect()
}

fn stdout_of(runner: &Runner, job_id: &str) -> String {
    fs::read_to_string(runner.job_dir(job_id).unwrap().join("stdout.log")).unwrap()
}

fn stderr_of(runner: &Runner, job_id: &str) -> String {
    fs::read_to_string(runner.job_dir(job_id).unwrap().join("stderr.log")).unwrap_or_default()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            let owner = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
            !zombie && owner == Some(uid)
        })
        .collect()
}

#[test]
fn a_job_sees_only_its_assigned_gpus_and_runs_as_its_tenant() {
    if !ready("a_job_sees_only_its_assigned_gpus_and_runs_as_its_tenant") {
        return;
    }
    let node = Node::new();
    let rt = runtime();
    rt.block_on(async {
        let (runner, mut events) = node.runner();
        let script = "ls /dev/nvidia*; id -u; id -g; cat /dev/nvidia0 2>/dev/null || echo no-nvidia0; touch /work/out; echo ro > /ro 2>/dev/null || echo read-only-root";
        let request = StartRequest {
            gpu_uuids: vec!["GPU-1".into()],
            tenant_uid_offset: 7,
            ..job("gpus", script)
        };
        assert_eq!(runner.start(request), StartOutcome::Started);
        let exit = exits(&mut events, &["gpus"]).await.remove(0);
        assert_eq!(exit.outcome, ExitOutcome::Code(0), "{exit:?}: {}", stderr_of(&runner, "gpus"));
        let uid = UID_BASE + 7;
        assert_eq!(
            stdout_of(&runner, "gpus"),
            format!("/dev/nvidia1\n/dev/nvidiactl\n{uid}\n{uid}\nno-nvidia0\nread-only-root\n")
        );
        let dir = runner.job_dir("gpus").unwrap();
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (uid, uid, 0o700));
        assert_eq!(fs::metadata(dir.join("out")).unwrap().uid(), uid);

        // A GPU the node does not have, an image it does not have, and a
        // host job on a node that runs none: refused with the reason.
        runner.start(StartRequest {
            gpu_uuids: vec!["GPU-9".into()],
            ..job("no-such-gpu", "true")
        });
        runner.start(StartRequest {
            image: Some("pytorch".into()),
            ..job("no-such-image", "true")
        });
        runner.start(StartRequest {
            image: None,
            ..job("host", "true")
        });
        let refused = exits(&mut events, &["no-such-gpu", "no-such-image", "host"]).await;
        assert!(refused[0].reason.contains("GPU GPU-9 is not in this node's inventory"), "{refused:?}");
        assert!(refused[1].reason.contains("image \"pytorch\" is not in this node's image store"), "{refused:?}");
        assert!(refused[2].reason.contains("only jobs with an image"), "{refused:?}");
        runner.shutdown("test over").await;
    });
}

#[test]
fn a_job_over_its_memory_limit_is_out_of_memory_and_its_neighbour_is_not() {
    if !ready("a_job_over_its_memory_limit_is_out_of_memory_and_its_neighbour_is_not") {
        return;
    }
    let node = Node::new();
    let rt = runtime();
    rt.block_on(async {
        let (runner, mut events) = node.runner();
        let hog = StartRequest {
            memory_bytes: 32 << 20,
            ..job(
                "hog",
                "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
            )
        };
        let neighbour = StartRequest {
            memory_bytes: 32 << 20,
            ..job("neighbour", "sleep 2; echo fine")
        };
        runner.start(neighbour);
        runner.start(hog);
        let [hog, neighbour] =
            <[JobExit; 2]>::try_from(exits(&mut events, &["hog", "neighbour"]).await).unwrap();
        assert_eq!(hog.reason, "out of memory (limit 32 MiB)", "{hog:?}");
        assert_eq!(hog.outcome, ExitOutcome::Signal(9), "{hog:?}");
        assert_eq!(stdout_of(&runner, "hog"), "");
        assert_eq!(neighbour.outcome, ExitOutcome::Code(0), "{neighbour:?}");
        assert_eq!(neighbour.reason, "exited with code 0");
        assert_eq!(stdout_of(&runner, "neighbour"), "fine\n");
        runner.shutdown("test over").await;
    });
}

#[test]
fn a_cpu_bound_job_is_held_to_its_cpu_request() {
    if !ready("a_cpu_bound_job_is_held_to_its_cpu_request") {
        return;
    }
    let node = Node::new();
    let rt = runtime();
    rt.block_on(async {
        let (runner, mut events) = node.runner();
        let request = StartRequest {
            cpu_millicores: 200,
            ..job("spin", "while :; do :; done")
        };
        runner.start(request);
        // Its cgroup's CPU time over a window of about two seconds: a fifth
        // of a CPU, never the whole CPU it would take unlimited.
        wait_for("the job to use some CPU", || {
            runner
                .cpu_time("spin")
                .is_some_and(|t| t > Duration::from_millis(50))
        });
        let (cpu_before, at) = (runner.cpu_time("spin").unwrap(), Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = runner.cpu_time("spin").unwrap() - cpu_before;
        let share = used.as_secs_f64() / at.elapsed().as_secs_f64();
        assert!(share < 0.35, "a 200-millicore job used {share:.2} CPUs");
        assert!(share > 0.02, "the job hardly ran: {share:.2} CPUs");
        runner.stop("spin", Some(Duration::from_millis(200)), "cancelled");
        let exit = exits(&mut events, &["spin"]).await.remove(0);
        assert_eq!(exit.reason, "cancelled");
        assert_eq!(runner.cpu_time("spin"), None);
        runner.shutdown("test over").await;
    });
}

#[test]
fn two_tenants_cannot_read_each_others_files_or_signal_each_others_processes() {
    if !ready("two_tenants_cannot_read_each_others_files_or_signal_each_others_processes") {
        return;
    }
    let node = Node::new();
    let rt = runtime();
    rt.block_on(async {
        let (runner, mut events) = node.runner();
        let (uid_a, uid_b) = (UID_BASE + 1, UID_BASE + 2);
        runner.start(StartRequest {
            tenant_uid_offset: 1,
            ..job("tenant-a", "echo secret > /work/secret; id -u; sleep 60")
        });
        runner.start(StartRequest {
            tenant_uid_offset: 2,
            // Its own PID namespace: the other tenant's processes are not
            // even there to be signalled.
            ..job(
                "tenant-b",
                "id -u; kill -9 -1; ls /proc | grep -c '^[0-9]'; sleep 60",
            )
        });
        let secret = runner.job_dir("tenant-a").unwrap().join("secret");
        wait_for("tenant a's secret", || secret.exists());
        wait_for("both tenants' processes", || {
            !processes_of(uid_a).is_empty() && !processes_of(uid_b).is_empty()
        });
        assert_eq!(stdout_of(&runner, "tenant-a"), format!("{uid_a}\n"));

        // Tenant b's uid, outside any container, can neither read tenant
        // a's working directory nor signal its processes.
        let as_b = |args: &[String]| {
            Command::new("/bin/busybox")
                .args(args)
                .uid(uid_b)
                .gid(uid_b)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
        };
        assert!(!as_b(&["cat".into(), secret.display().to_string()]).success());
        let dir_a = runner.job_dir("tenant-a").unwrap().display().to_string();
        assert!(!as_b(&["ls".into(), dir_a]).success());
        for pid in processes_of(uid_a) {
            let kill = as_b(&["kill".into(), "-0".into(), pid.to_string()]);
            assert!(!kill.success(), "tenant b could signal {pid}");
        }
        wait_for("tenant b's kill -9 -1", || {
            stdout_of(&runner, "tenant-b").lines().count() >= 2
        });
        assert!(
            !processes_of(uid_a).is_empty(),
            "tenant a's job was killed by tenant b"
        );

        runner.stop("tenant-a", Some(Duration::from_millis(200)), "cancelled");
        runner.stop("tenant-b", Some(Duration::from_millis(200)), "cancelled");
        exits(&mut events, &["tenant-a", "tenant-b"]).await;
        assert!(processes_of(uid_a).is_empty() && processes_of(uid_b).is_empty());
        runner.shutdown("test over").await;
    });
}

/// A network namespace with a TCP listener, reached from the host over a
/// veth pair with addresses this test assigns; removed on drop.
struct Listener {
    netns: String,
    address: String,
    server: std::process::Child,
}

const LISTEN_PORT: u16 = 7913;

impl Listener {
    fn start() -> Listener {
        let id = std::process::id() % 200;
        let netns = format!("edupool-t{}", std::process::id());
        let (host_if, ns_if) = (format!("ept{id}h"), format!("ept{id}n"));
        let (host_ip, ns_ip) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &netns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "/bin/busybox", "nc", "-ll", "-p"])
            .arg(LISTEN_PORT.to_string())
            .args(["-e", "/bin/busybox", "echo", "hello"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Listener {
            netns,
            address: ns_ip,
            server,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn a_data_level_2_job_cannot_reach_the_network_and_a_level_0_job_can() {
    if !ready("a_data_level_2_job_cannot_reach_the_network_and_a_level_0_job_can") {
        return;
    }
    let node = Node::new();
    let listener = Listener::start();
    let rt = runtime();
    rt.block_on(async {
        let (runner, mut events) = node.runner();
        let connect = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do if nc -w 2 {} {LISTEN_PORT} </dev/null; then echo connected; exit 0; fi; sleep 0.5; done; echo no-connection",
            listener.address
        );
        runner.start(StartRequest {
            data_level: 0,
            ..job("level-0", &connect)
        });
        let level0 = exits(&mut events, &["level-0"]).await.remove(0);
        assert_eq!(level0.outcome, ExitOutcome::Code(0), "{level0:?}");
        assert!(stdout_of(&runner, "level-0").ends_with("connected\n"), "{}", stdout_of(&runner, "level-0"));

        runner.start(StartRequest {
            data_level: 2,
            ..job("level-2", &connect)
        });
        let level2 = exits(&mut events, &["level-2"]).await.remove(0);
        assert_eq!(level2.outcome, ExitOutcome::Code(0), "{level2:?}");
        assert_eq!(stdout_of(&runner, "level-2"), "no-connection\n");
        runner.shutdown("test over").await;
    });
    drop(listener);
}

#[test]
fn a_restarted_agent_stops_the_containers_its_predecessor_left_running() {
    if !ready("a_restarted_agent_stops_the_containers_its_predecessor_left_running") {
        return;
    }
    let node = Node::new();
    let uid = UID_BASE + 3;
    // The first agent starts a job (which forks, and makes its own
    // process group) and then hangs for good: its runtime is never polled
    // again, as if the process had been killed with everything it runs
    // left behind.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    {
        let runner_parts = node.runner();
        std::thread::spawn(move || {
            let (runner, mut events) = runner_parts;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                runner.start(StartRequest {
                    tenant_uid_offset: 3,
                    grace_period: Some(Duration::from_millis(500)),
                    ..job("left", "setsid sleep 600 & sleep 600")
                });
                let report = events.recv().await.unwrap();
                started_tx.send(report.is_running()).unwrap();
            });
            loop {
                std::thread::park();
            }
        });
    }
    assert!(
        started_rx.recv_timeout(DEADLINE).unwrap(),
        "the job started"
    );
    wait_for("both processes of the job", || processes_of(uid).len() >= 2);
    // And a cgroup with a process in it that no record names, as an agent
    // that crashed before writing a job's record leaves behind.
    let stray_rel = node.driver.agent_cgroup(&node.work_dir()).join("stray");
    let stray_dirs: Vec<PathBuf> = match node.driver.cgroups.version() {
        CgroupVersion::V1 => ["memory", "cpu", "cpuacct", "pids", "devices"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&stray_rel))
            .collect(),
        CgroupVersion::V2 => vec![Path::new("/sys/fs/cgroup").join(&stray_rel)],
    };
    let mut stray = Command::new("sleep").arg("600").spawn().unwrap();
    for dir in &stray_dirs {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("cgroup.procs"), stray.id().to_string()).unwrap();
    }

    let rt = runtime();
    rt.block_on(async {
        let (runner, _events) = node.runner();
        assert_eq!(runner.recover().await.unwrap(), 1);
        // Gone before `recover` returns, so before the agent's first hello.
        assert_eq!(processes_of(uid), Vec::<i32>::new());
        let exit = runner.report("left").unwrap().exit().cloned().unwrap();
        assert_eq!(exit.reason, RESTART_REASON);
        let work = node.work_dir();
        assert!(!work.join("bundles/left").exists());
        let state: Vec<_> = fs::read_dir(work.join("runtime"))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(
            state.is_empty(),
            "the runtime still knows containers: {state:?}"
        );
        let rel = node.driver.agent_cgroup(&work).join("left");
        let cgroup = match node.driver.cgroups.version() {
            CgroupVersion::V1 => Path::new("/sys/fs/cgroup/memory").join(rel),
            CgroupVersion::V2 => Path::new("/sys/fs/cgroup").join(rel),
        };
        assert!(!cgroup.exists(), "{} is still there", cgroup.display());
        assert!(
            stray_dirs.iter().all(|d| !d.exists()),
            "the stray cgroup is still there"
        );
        runner.shutdown("test over").await;
    });
    let status = stray.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

#[test]
fn dev_mode_says_its_jobs_run_as_host_processes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(edupool_tests::bin("edupool-sim"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _dev = edupool_tests::Proc::new(child, "dev");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.trim_start().starts_with("job driver"))
        .expect("the banner names the job driver");
    assert!(line.contains("host processes"), "{line}");
}

#[test]
fn a_root_agent_without_host_jobs_needs_no_job_user() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED a_root_agent_without_host_jobs_needs_no_job_user: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = |extra: &[&str]| {
        Command::new(edupool_tests::bin("edupool-agent"))
            .args([
                "run",
                "--scheduler",
                "127.0.0.1:1",
                "--token",
                "t",
                "--runtime",
                "none",
            ])
            .args([
                "--simulate-gpus",
                "1xA100-80GB",
                "--node-name",
                "n1",
                "--work-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // With host jobs a root agent needs --run-as (or --allow-root) ...
    let refused = agent(&["--allow-host-jobs"]).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("set --run-as USER"), "{err}");
    // ... without them it runs: its jobs are containers, as tenants' uids.
    let mut running = edupool_tests::Proc::new(agent(&[]), "agent");
    wait_for("the agent to be up", || {
        fs::read_dir(dir.path().join("jobs")).is_ok()
    });
    assert!(running.is_running(), "the agent exited");
}
