//! The agent's configuration and its validation.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::inventory::GpuInventory;
use crate::runner::container::{
    DEFAULT_CGROUP_PARENT, DEFAULT_PIDS_LIMIT, DEFAULT_TENANT_UID_BASE,
};
use crate::runner::DEFAULT_GRACE_PERIOD;

/// How often GPU telemetry is sampled unless configured otherwise.
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The longest node name accepted (a DNS name's limit).
pub const MAX_NODE_NAME_LEN: usize = 253;

/// Everything [`run`](crate::run) needs. Build it with
/// [`AgentConfig::new`], adjust the public fields, then
/// [`validate`](AgentConfig::validate) (which `run` also does).
#[derive(Clone)]
pub struct AgentConfig {
    /// This node's name in the pool.
    pub node_name: String,
    /// The scheduler's endpoints, tried in turn: `http://host:port`, or
    /// `host:port` for the same.
    pub endpoints: Vec<String>,
    /// The agent's token, sent as `authorization: Bearer <token>`.
    pub token: String,
    /// Jobs run in `<work_dir>/jobs/<job_id>/`; created if missing.
    pub work_dir: PathBuf,
    /// Where the GPU inventory comes from.
    pub inventory: Arc<dyn GpuInventory>,
    /// SIGTERM to SIGKILL for jobs whose start order gives no grace period.
    pub default_grace_period: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// The first delay before reconnecting; it doubles on every failed
    /// attempt, up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// The longest delay between two connection attempts.
    pub reconnect_max: Duration,
    /// How often GPU telemetry is sampled (and health counters checked).
    pub telemetry_interval: Duration,
    /// Serve Prometheus metrics at `/metrics` on this listener; `None`: no
    /// endpoint. The caller binds it, so it knows the address first.
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
    /// mTLS to the scheduler: the alliance's CA and this node's
    /// certificate (`node:<node_name>`). `None`: plaintext, which only a
    /// scheduler on loopback accepts unless `allow_plaintext_remote`.
    pub tls: Option<AgentTls>,
    /// Plaintext to a scheduler that is not on loopback (dev mode only).
    pub allow_plaintext_remote: bool,
    /// Run jobs as this user when the agent is root.
    pub run_as: Option<String>,
    /// Allow jobs to run as root (an agent that is root with no `run_as`,
    /// or a `run_as` user with uid 0).
    pub allow_root: bool,
    /// The container runtime for jobs with an image.
    pub runtime: RuntimeChoice,
    /// The runtime binary [default: `crun` on `PATH`].
    pub runtime_path: Option<PathBuf>,
    /// The image store: image `NAME` is `<image_store>/NAME/rootfs/`.
    pub image_store: PathBuf,
    /// Run jobs without an image as host processes (like Nomad's
    /// `raw_exec`); refused otherwise.
    pub allow_host_jobs: bool,
    /// Container jobs run as uid = gid = this + their tenant's offset.
    pub tenant_uid_base: u32,
    /// Where GPU device nodes are looked up.
    pub device_root: PathBuf,
    /// Driver files mounted read-only into container jobs with GPUs.
    pub driver_files: Vec<PathBuf>,
    /// Data levels of 2 and above whose container jobs keep the network.
    pub egress_levels: Vec<u32>,
    /// The most processes one container job may have.
    pub pids_limit: u64,
    /// Job cgroups are made under `<cgroup_parent>/<agent>/`.
    pub cgroup_parent: PathBuf,
    /// Where the cgroup file system is mounted.
    pub cgroup_root: PathBuf,
    /// The CPU and memory jobs may use here (after the system reserve),
    /// as reported to the scheduler; 0 reports none, and then no job that
    /// asks for CPU or memory is placed here.
    pub host: crate::host::HostResources,
}

/// Which container runtime the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// crun; the agent does not start without it (and root).
    Crun,
    /// crun when it is there and the agent is root; otherwise none.
    Auto,
    /// None: jobs with an image fail to start, and no image is reported.
    None,
}

/// The PEM files of the agent's mTLS: the CA that signed the scheduler's
/// certificate, and this node's certificate and key.
#[derive(Clone)]
pub struct AgentTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl AgentTls {
    /// Reads the three files (PEM).
    pub fn from_files(
        ca_cert: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<AgentTls, ConfigError> {
        let read = |path: &std::path::Path, label: &str| {
            let bytes = std::fs::read(path).map_err(|e| ConfigError::TlsFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            if !String::from_utf8_lossy(&bytes).contains(&format!("{label}-----")) {
                return Err(ConfigError::TlsFile {
                    path: path.to_path_buf(),
                    reason: format!("no PEM {} in it", label.to_lowercase()),
                });
            }
            Ok(bytes)
        };
        Ok(AgentTls {
            ca_pem: read(ca_cert, "CERTIFICATE")?,
            cert_pem: read(cert, "CERTIFICATE")?,
            key_pem: read(key, "PRIVATE KEY")?,
        })
    }

    fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

impl AgentConfig {
    /// A configuration with default timings.
    pub fn new(
        node_name: impl Into<String>,
        endpoints: Vec<String>,
        token: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        inventory: Arc<dyn GpuInventory>,
    ) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            endpoints,
            token: token.into(),
            work_dir: work_dir.into(),
            inventory,
            default_grace_period: DEFAULT_GRACE_PERIOD,
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            telemetry_interval: DEFAULT_TELEMETRY_INTERVAL,
            metrics_listener: None,
            tls: None,
            allow_plaintext_remote: false,
            run_as: None,
            allow_root: false,
            runtime: RuntimeChoice::None,
            runtime_path: None,
            image_store: PathBuf::from("/var/lib/edupool-agent/images"),
            allow_host_jobs: false,
            tenant_uid_base: DEFAULT_TENANT_UID_BASE,
            device_root: PathBuf::from("/dev"),
            driver_files: crate::runner::container::DEFAULT_DRIVER_FILES
                .iter()
                .map(PathBuf::from)
                .collect(),
            egress_levels: vec![],
            pids_limit: DEFAULT_PIDS_LIMIT,
            cgroup_parent: PathBuf::from(DEFAULT_CGROUP_PARENT),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            host: crate::host::HostResources::default(),
        }
    }

    /// Checks every field and the rules between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_name(&self.node_name)?;
        if self.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints);
        }
        for endpoint in &self.endpoints {
            let parsed = parse_endpoint(endpoint, self.tls.is_some())?;
            let host = parsed.uri().host().unwrap_or_default();
            if self.tls.is_none() && !self.allow_plaintext_remote && !is_loopback(host) {
                return Err(ConfigError::PlaintextRemote {
                    endpoint: endpoint.clone(),
                });
            }
        }
        self.authorization()?;
        if self.work_dir.as_os_str().is_empty() {
            return Err(ConfigError::EmptyWorkDir);
        }
        for (name, value) in [
            ("default_grace_period", self.default_grace_period),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_min", self.reconnect_min),
            ("reconnect_max", self.reconnect_max),
            ("telemetry_interval", self.telemetry_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { name });
            }
        }
        if self.tenant_uid_base == 0 {
            return Err(ConfigError::RootTenantUids);
        }
        if self.pids_limit == 0 {
            return Err(ConfigError::ZeroPidsLimit);
        }
        let parent_ok = self.cgroup_parent.is_relative()
            && self
                .cgroup_parent
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !parent_ok || self.cgroup_parent.as_os_str().is_empty() {
            return Err(ConfigError::CgroupParent {
                parent: self.cgroup_parent.clone(),
            });
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::ReconnectRange {
                min: self.reconnect_min,
                max: self.reconnect_max,
            });
        }
        Ok(())
    }

    /// The `authorization` metadata value for the token.
    pub(crate) fn authorization(&self) -> Result<MetadataValue<Ascii>, ConfigError> {
        if self.token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidToken);
        }
        format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| ConfigError::InvalidToken)
    }

    /// The endpoints as tonic endpoints, with this configuration's timeouts.
    pub(crate) fn tonic_endpoints(&self) -> Result<Vec<(String, Endpoint)>, ConfigError> {
        let connector = self.connector();
        self.endpoints
            .iter()
            .map(|e| Ok((e.clone(), connector.endpoint(e)?)))
            .collect()
    }

    /// What turns a scheduler address into an endpoint with this
    /// configuration's TLS and timeouts; also used for the leader a
    /// follower names, which must be reached exactly like the endpoints.
    pub(crate) fn connector(&self) -> Connector {
        Connector {
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// Builds endpoints to the scheduler: `https://` with the agent's CA and
/// certificate when it has TLS, `http://` otherwise.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<AgentTls>,
    connect_timeout: Duration,
}

impl Connector {
    /// The endpoint of `address` (`host:port`, or a URL).
    pub(crate) fn endpoint(&self, address: &str) -> Result<Endpoint, ConfigError> {
        let mut endpoint = parse_endpoint(address, self.tls.is_some())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client_config()).map_err(|err| {
                ConfigError::InvalidEndpoint {
                    endpoint: address.to_owned(),
                    reason: err.to_string(),
                }
            })?;
        }
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A scheduler that vanished without closing the connection is
            // noticed within about 20 s.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true))
    }

    /// The endpoint of a leader hint (`host:port`): the known endpoint
    /// with the same host and port when there is one, else a new one
    /// built like the known ones. `None` for a hint that is no address.
    pub(crate) fn leader_endpoint(
        &self,
        known: &[(String, Endpoint)],
        leader: &str,
    ) -> Option<(String, Endpoint)> {
        let endpoint = self.endpoint(leader).ok()?;
        let authority = endpoint.uri().authority()?.clone();
        if let Some(same) = known
            .iter()
            .find(|(_, e)| e.uri().authority() == Some(&authority))
        {
            return Some(same.clone());
        }
        Some((endpoint.uri().to_string(), endpoint))
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("node_name", &self.node_name)
            .field("endpoints", &self.endpoints)
            .field("token", &"<redacted>")
            .field("work_dir", &self.work_dir)
            .field("inventory", &self.inventory.backend())
            .field("default_grace_period", &self.default_grace_period)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("telemetry_interval", &self.telemetry_interval)
            .field("tls", &self.tls.is_some())
            .field("allow_plaintext_remote", &self.allow_plaintext_remote)
            .field("run_as", &self.run_as)
            .field("allow_root", &self.allow_root)
            .field("runtime", &self.runtime)
            .field("runtime_path", &self.runtime_path)
            .field("image_store", &self.image_store)
            .field("allow_host_jobs", &self.allow_host_jobs)
            .field("tenant_uid_base", &self.tenant_uid_base)
            .field("device_root", &self.device_root)
            .field("egress_levels", &self.egress_levels)
            .field("pids_limit", &self.pids_limit)
            .field("cgroup_parent", &self.cgroup_parent)
            .field(
                "metrics_listener",
                &self
                    .metrics_listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok()),
            )
            .finish()
    }
}

fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidNodeName {
            name: name.to_owned(),
        })
    }
}

/// Whether `host` (as a URI shows it) is this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// With TLS every endpoint is reached over `https://` (a bare `host:port`
/// or `http://` is upgraded); without, `https://` is refused.
fn parse_endpoint(endpoint: &str, tls: bool) -> Result<Endpoint, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(invalid("expected http(s)://host:port or host:port"));
    }
    if scheme == "https" && !tls {
        return Err(ConfigError::TlsUnsupported {
            endpoint: endpoint.to_owned(),
        });
    }
    let scheme = if tls { "https" } else { "http" };
    let parsed =
        Endpoint::from_shared(format!("{scheme}://{rest}")).map_err(|e| invalid(&e.to_string()))?;
    if parsed.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(parsed)
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The node name is empty, too long, or has other characters.
    #[error("invalid node name {name:?}: expected 1 to {max} letters, digits, '-', '_' or '.'", max = MAX_NODE_NAME_LEN)]
    InvalidNodeName {
        /// The name as given.
        name: String,
    },
    /// No scheduler endpoint.
    #[error("no scheduler endpoint given")]
    NoEndpoints,
    /// An endpoint that is not a URL the agent can connect to.
    #[error("invalid scheduler endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` endpoint without the TLS files.
    #[error("scheduler endpoint {endpoint:?} uses https: pass --ca-cert, --cert and --key")]
    TlsUnsupported {
        /// The endpoint as given.
        endpoint: String,
    },
    /// Plaintext to a scheduler on another machine.
    #[error("refusing plaintext to the scheduler at {endpoint:?}, which is not on loopback: pass --ca-cert, --cert and --key (mTLS)")]
    PlaintextRemote {
        /// The endpoint as given.
        endpoint: String,
    },
    /// A TLS file that cannot be used.
    #[error("cannot use {}: {reason}", path.display())]
    TlsFile {
        /// The file as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No token.
    #[error("the agent token is empty")]
    EmptyToken,
    /// A token that cannot be sent as gRPC metadata.
    #[error("the agent token may contain only visible ASCII characters")]
    InvalidToken,
    /// No work directory.
    #[error("the work directory is empty")]
    EmptyWorkDir,
    /// A duration that must be positive is zero.
    #[error("{name} must be greater than zero")]
    ZeroDuration {
        /// The field's name.
        name: &'static str,
    },
    /// Tenant uids would start at root's.
    #[error("the tenant uid base must be above 0 (tenants' jobs never run as root)")]
    RootTenantUids,
    /// No process allowed.
    #[error("the job PID limit must be greater than zero")]
    ZeroPidsLimit,
    /// A cgroup parent that is not a plain relative path.
    #[error("invalid cgroup parent {}: expected a relative path such as edupool", parent.display())]
    CgroupParent {
        /// The parent as given.
        parent: PathBuf,
    },
    /// The reconnect delays are the wrong way round.
    #[error("reconnect_max ({max:?}) is shorter than reconnect_min ({min:?})")]
    ReconnectRange {
        /// `reconnect_min`.
        min: Duration,
        /// `reconnect_max`.
        max: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::SimulatedInventory;

    fn config() -> AgentConfig {
        let mut config = AgentConfig::new(
            "node-1",
            vec!["http://127.0.0.1:7070".into(), "sched-2:7070".into()],
            "tok3n",
            "/tmp/edupool-agent",
            Arc::new(SimulatedInventory::parse("node-1", "1xT4-16GB").unwrap()),
        );
        config.allow_plaintext_remote = true;
        config
    }

    #[test]
    fn a_good_config_validates_and_hides_its_token() {
        let config = config();
        config.validate().unwrap();
        assert_eq!(config.authorization().unwrap(), "Bearer tok3n");
        let endpoints = config.tonic_endpoints().unwrap();
        assert_eq!(endpoints[1].1.uri().to_string(), "http://sched-2:7070/");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("tok3n") && debug.contains("simulated"),
            "{debug}"
        );
    }

    /// `config()` with TLS files from a self-signed certificate for
    /// 127.0.0.1 (as CA and as the agent's own certificate).
    fn tls_config(dir: &std::path::Path) -> AgentConfig {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
        let mut config = config();
        config.endpoints = vec!["http://127.0.0.1:7070".into(), "127.0.0.1:7071".into()];
        config.tls = Some(AgentTls::from_files(&cert_file, &cert_file, &key_file).unwrap());
        config
    }

    #[test]
    fn a_leader_hint_is_reached_with_the_same_tls_as_the_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let with_tls = tls_config(dir.path());
        with_tls.validate().unwrap();
        let known = with_tls.tonic_endpoints().unwrap();
        let connector = with_tls.connector();

        // A follower names a replica the agent knows: that endpoint.
        let (name, endpoint) = connector.leader_endpoint(&known, "127.0.0.1:7071").unwrap();
        assert_eq!(name, "127.0.0.1:7071");
        assert_eq!(endpoint.uri().to_string(), "https://127.0.0.1:7071/");
        let (name, _) = connector.leader_endpoint(&known, "127.0.0.1:7070").unwrap();
        assert_eq!(name, "http://127.0.0.1:7070");

        // One it does not know: https, like the configured ones.
        let (name, endpoint) = connector.leader_endpoint(&known, "127.0.0.1:7072").unwrap();
        assert_eq!(endpoint.uri().to_string(), "https://127.0.0.1:7072/");
        assert_eq!(name, "https://127.0.0.1:7072/");

        // Without TLS the hint stays plaintext; a hint that is no address
        // is not followed.
        let plain = config();
        let known = plain.tonic_endpoints().unwrap();
        let (_, endpoint) = plain
            .connector()
            .leader_endpoint(&known, "127.0.0.1:7072")
            .unwrap();
        assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7072/");
        assert!(plain
            .connector()
            .leader_endpoint(&known, "not a host")
            .is_none());
    }

    #[test]
    fn bad_configs_are_rejected() {
        type Change = fn(&mut AgentConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.node_name = String::new(), "invalid node name \"\""),
            (|c| c.node_name = "a b".into(), "invalid node name \"a b\""),
            (|c| c.endpoints.clear(), "no scheduler endpoint given"),
            (
                |c| c.endpoints = vec!["https://s:1".into()],
                "uses https: pass --ca-cert, --cert and --key",
            ),
            (
                |c| c.allow_plaintext_remote = false,
                "refusing plaintext to the scheduler at \"sched-2:7070\", which is not on loopback",
            ),
            (
                |c| c.endpoints = vec!["ftp://s:1".into()],
                "invalid scheduler endpoint \"ftp://s:1\"",
            ),
            (
                |c| c.endpoints = vec!["http://".into()],
                "invalid scheduler endpoint \"http://\"",
            ),
            (|c| c.token = String::new(), "the agent token is empty"),
            (
                |c| c.token = "two words".into(),
                "may contain only visible ASCII",
            ),
            (
                |c| c.work_dir = PathBuf::new(),
                "the work directory is empty",
            ),
            (
                |c| c.connect_timeout = Duration::ZERO,
                "connect_timeout must be greater than zero",
            ),
            (|c| c.tenant_uid_base = 0, "tenant uid base must be above 0"),
            (
                |c| c.cgroup_parent = PathBuf::from("/edupool"),
                "invalid cgroup parent /edupool",
            ),
            (
                |c| c.cgroup_parent = PathBuf::from("a/../b"),
                "invalid cgroup parent a/../b",
            ),
            (
                |c| c.reconnect_max = Duration::from_millis(10),
                "reconnect_max (10ms) is shorter than reconnect_min (100ms)",
            ),
        ];
        for (change, message) in cases {
            let mut config = config();
            change(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(message), "{err:?} should contain {message:?}");
        }
    }
}
