//! The bundle's `config.json`, as the OCI runtime specification (1.0)
//! defines it: typed structs for the parts the agent uses, and the one
//! function that fills them for a job.
//!
//! Cgroups are left out on purpose: the agent makes and limits the job's
//! cgroup itself and starts the runtime inside it (see `cgroup`).

use serde::Serialize;

use super::devices::DeviceNode;

/// The OCI version these structs follow.
pub(crate) const OCI_VERSION: &str = "1.0.2";

/// Where the job's working directory is mounted inside the container.
pub const CONTAINER_WORK_DIR: &str = "/work";

/// `PATH` inside containers unless the job sets its own.
pub(crate) const CONTAINER_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What one job's container is made of.
#[derive(Debug, Clone)]
pub(crate) struct ContainerSpec {
    pub(crate) hostname: String,
    pub(crate) rootfs: String,
    pub(crate) args: Vec<String>,
    /// `NAME=value`.
    pub(crate) env: Vec<String>,
    pub(crate) uid: u32,
    /// The job's working directory on the host.
    pub(crate) work_dir: String,
    /// Run in its own network namespace (loopback only).
    pub(crate) isolate_network: bool,
    pub(crate) devices: Vec<DeviceNode>,
    /// Host paths bind-mounted read-only at the same path (driver files).
    pub(crate) read_only_binds: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Config {
    oci_version: &'static str,
    root: Root,
    process: Process,
    hostname: String,
    mounts: Vec<Mount>,
    linux: Linux,
}

#[derive(Debug, Serialize)]
struct Root {
    path: String,
    readonly: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    terminal: bool,
    user: User,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Capabilities,
    no_new_privileges: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct User {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
}

/// Every set empty: the job's processes hold no capability at all.
#[derive(Debug, Serialize, Default)]
struct Capabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Mount {
    destination: String,
    #[serde(rename = "type")]
    kind: &'static str,
    source: String,
    options: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    namespaces: Vec<Namespace>,
    devices: Vec<Device>,
    masked_paths: Vec<&'static str>,
    readonly_paths: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Device {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    major: u64,
    minor: u64,
    file_mode: u32,
    uid: u32,
    gid: u32,
}

impl ContainerSpec {
    /// The `config.json` of this container.
    pub(crate) fn config(&self) -> Config {
        let mut namespaces = vec!["pid", "mount", "ipc", "uts"];
        if self.isolate_network {
            namespaces.push("network");
        }
        Config {
            oci_version: OCI_VERSION,
            root: Root {
                path: self.rootfs.clone(),
                readonly: true,
            },
            process: Process {
                terminal: false,
                user: User {
                    uid: self.uid,
                    gid: self.uid,
                    additional_gids: vec![],
                },
                args: self.args.clone(),
                env: self.env.clone(),
                cwd: CONTAINER_WORK_DIR.to_owned(),
                // Resource limits (open files, ...) are the agent's own.
                capabilities: Capabilities::default(),
                no_new_privileges: true,
            },
            hostname: self.hostname.clone(),
            mounts: self.mounts(),
            linux: Linux {
                namespaces: namespaces
                    .into_iter()
                    .map(|kind| Namespace { kind })
                    .collect(),
                devices: self
                    .devices
                    .iter()
                    .map(|d| Device {
                        path: d.path.clone(),
                        kind: "c",
                        major: d.major,
                        minor: d.minor,
                        file_mode: 0o666,
                        uid: 0,
                        gid: 0,
                    })
                    .collect(),
                masked_paths: vec![
                    "/proc/acpi",
                    "/proc/asound",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ],
                readonly_paths: vec![
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ],
            },
        }
    }

    fn mounts(&self) -> Vec<Mount> {
        let mount = |destination: &str, kind, source: &str, options: &[&'static str]| Mount {
            destination: destination.to_owned(),
            kind,
            source: source.to_owned(),
            options: options.to_vec(),
        };
        let mut mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
            mount(
                CONTAINER_WORK_DIR,
                "bind",
                &self.work_dir,
                &["rbind", "rw", "nosuid", "nodev"],
            ),
        ];
        // sysfs shows the network devices of the namespace it is mounted
        // from: only a job with its own network namespace gets one.
        if self.isolate_network {
            mounts.push(mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ));
        }
        for path in &self.read_only_binds {
            mounts.push(mount(
                path,
                "bind",
                path,
                &["rbind", "ro", "nosuid", "nodev"],
            ));
        }
        mounts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(isolate_network: bool) -> ContainerSpec {
        ContainerSpec {
            hostname: "j1".into(),
            rootfs: "/images/busybox/rootfs".into(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            uid: 200_007,
            work_dir: "/var/lib/edupool-agent/jobs/j1".into(),
            isolate_network,
            devices: vec![DeviceNode {
                path: "/dev/nvidia1".into(),
                major: 195,
                minor: 1,
            }],
            read_only_binds: vec!["/usr/bin/nvidia-smi".into()],
        }
    }

    #[test]
    fn the_config_follows_the_oci_field_names() {
        let json = serde_json::to_value(spec(true).config()).unwrap();
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["process"]["user"]["uid"], 200_007);
        assert_eq!(json["process"]["user"]["gid"], 200_007);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["cwd"], "/work");
        assert_eq!(
            json["process"]["capabilities"]["bounding"],
            serde_json::json!([])
        );
        let namespaces: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces, ["pid", "mount", "ipc", "uts", "network"]);
        assert_eq!(
            json["linux"]["devices"][0],
            serde_json::json!({"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1,
                "fileMode": 0o666, "uid": 0, "gid": 0})
        );
        let work = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/work")
            .unwrap();
        assert_eq!(work["source"], "/var/lib/edupool-agent/jobs/j1");
        assert!(json["linux"].get("resources").is_none());
    }

    #[test]
    fn only_an_isolated_job_gets_a_network_namespace() {
        let json = serde_json::to_value(spec(false).config()).unwrap();
        let namespaces = json["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.iter().all(|n| n["type"] != "network"));
    }
}
