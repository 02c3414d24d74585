//! Connecting to a scheduler: an ordered list of endpoints, the first that
//! answers wins, and a bearer token sent with every request. With several
//! replicas, [`connect_leader`] asks the one that answered where the
//! leader is and connects there, and [`leader_hint`] reads the address a
//! follower names when it refuses a write. [`crate::failover`] retries a
//! command across them.
//!
//! Also how a gRPC [`Status`] reads for a person ([`describe_status`]).

use std::{error::Error as StdError, time::Duration};

use edupool_proto::v1::{
    admin_service_client::AdminServiceClient, cluster_service_client::ClusterServiceClient,
    job_service_client::JobServiceClient, usage_service_client::UsageServiceClient,
    GetClusterStatusRequest, ReplicaRole,
};
use tonic::{
    metadata::AsciiMetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    Code, Request, Status,
};

/// Where a scheduler listens when nothing else is said.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

/// How long one endpoint may take to accept a connection before the next
/// one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Metadata a follower puts on UNAVAILABLE: the leader's `host:port`.
pub const LEADER_METADATA: &str = "x-edupool-leader";
/// Request metadata that lets any replica answer a read from its own,
/// possibly stale, state.
pub const STALE_OK_METADATA: &str = "x-edupool-stale-ok";

/// Adds `authorization: Bearer <token>` to every request, or nothing when
/// there is no token; and `x-edupool-stale-ok` when stale reads are fine.
#[derive(Clone, Debug, Default)]
pub struct BearerToken {
    header: Option<AsciiMetadataValue>,
    stale_ok: bool,
    deadline: Option<Duration>,
}

impl BearerToken {
    /// `None` or an empty token sends no `authorization` header.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let header = match token.map(str::trim) {
            None | Some("") => None,
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| ClientError::InvalidToken)?,
            ),
        };
        Ok(BearerToken {
            header,
            stale_ok: false,
            deadline: None,
        })
    }

    /// Marks every request as content with a follower's possibly stale view.
    pub fn stale_ok(mut self, stale_ok: bool) -> Self {
        self.stale_ok = stale_ok;
        self
    }

    /// Gives every request this deadline (`grpc-timeout`): the call ends
    /// with an error when no answer came within it, and the server stops
    /// waiting for it too. For a stream it bounds only the wait for the
    /// stream to open.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        if self.stale_ok {
            request
                .metadata_mut()
                .insert(STALE_OK_METADATA, AsciiMetadataValue::from_static("true"));
        }
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline);
        }
        Ok(request)
    }
}

/// A channel whose requests carry the bearer token.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;
/// The `JobService` client [`connect`] gives.
pub type JobClient = JobServiceClient<AuthChannel>;
/// The `AdminService` client [`connect`] gives.
pub type AdminClient = AdminServiceClient<AuthChannel>;
/// The `ClusterService` client [`connect`] gives.
pub type ClusterClient = ClusterServiceClient<AuthChannel>;
/// The `UsageService` client [`connect`] gives.
pub type UsageClient = UsageServiceClient<AuthChannel>;

/// Clients of both public services over one connection.
#[derive(Clone, Debug)]
pub struct Clients {
    pub jobs: JobClient,
    pub admin: AdminClient,
    pub cluster: ClusterClient,
    pub usage: UsageClient,
    /// The endpoint that answered, e.g. `http://10.0.0.5:7070`.
    pub endpoint: String,
}

impl Clients {
    /// Clients over an already connected channel.
    pub fn new(
        channel: Channel,
        token: Option<&str>,
        endpoint: impl Into<String>,
    ) -> Result<Self, ClientError> {
        Self::with_auth(channel, BearerToken::new(token)?, endpoint)
    }

    /// Clients over a channel, with a prepared interceptor.
    pub fn with_auth(
        channel: Channel,
        auth: BearerToken,
        endpoint: impl Into<String>,
    ) -> Result<Self, ClientError> {
        Ok(Clients {
            jobs: JobServiceClient::with_interceptor(channel.clone(), auth.clone()),
            admin: AdminServiceClient::with_interceptor(channel.clone(), auth.clone()),
            cluster: ClusterServiceClient::with_interceptor(channel.clone(), auth.clone()),
            usage: UsageServiceClient::with_interceptor(channel, auth),
            endpoint: endpoint.into(),
        })
    }
}

/// How [`connect_leader`] treats replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Reads may be answered by any replica from its own state; the
    /// replica that answers first is kept.
    pub stale_ok: bool,
    /// Speak TLS, trusting this CA; plaintext when `None`.
    pub tls: Option<ClientTls>,
    /// The deadline of each call (see [`BearerToken::deadline`]); also
    /// how long a replica may take to say who leads. `None`: no deadline.
    pub attempt_timeout: Option<Duration>,
}

/// Server-authenticated TLS: the scheduler must show a certificate signed
/// by this CA for the address it is reached at. The client still presents
/// its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
}

impl ClientTls {
    /// Trusts the CA certificate(s) in the PEM file `ca_cert`.
    pub fn from_file(ca_cert: &std::path::Path) -> Result<ClientTls, ClientError> {
        let ca_pem = std::fs::read(ca_cert).map_err(|e| ClientError::CaCert {
            path: ca_cert.display().to_string(),
            reason: e.to_string(),
        })?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ClientError::CaCert {
                path: ca_cert.display().to_string(),
                reason: "no PEM certificate in it".into(),
            });
        }
        Ok(ClientTls { ca_pem })
    }

    fn config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem))
    }
}

/// Connects like [`connect`], then, unless stale reads are fine, asks the
/// replica that answered who leads and moves to the leader, so writes and
/// linearizable reads take no detour. Unreachable and paused replicas, a
/// follower that knows no leader, and one naming a leader that cannot be
/// reached are skipped for the next; when no replica leads, the first
/// that answered is kept (its answers then say why). Every endpoint that
/// was passed over is in the error when none answers.
pub async fn connect_leader(
    endpoints: &[String],
    token: Option<&str>,
    options: ConnectOptions,
) -> Result<Clients, ClientError> {
    let auth = BearerToken::new(token)?
        .stale_ok(options.stale_ok)
        .deadline(options.attempt_timeout);
    let mut attempts = Vec::new();
    match find_leader(endpoints, &auth, &options, &mut attempts).await? {
        Some(clients) => Ok(clients),
        None => Err(ClientError::Unreachable { attempts }),
    }
}

/// [`connect_leader`]'s search, noting in `attempts` each replica passed
/// over and why; `None` when none could be used.
pub async fn find_leader(
    endpoints: &[String],
    auth: &BearerToken,
    options: &ConnectOptions,
    attempts: &mut Vec<Attempt>,
) -> Result<Option<Clients>, ClientError> {
    let tls = options.tls.as_ref();
    let list: Vec<String> = endpoints.iter().flat_map(|e| split_endpoints(e)).collect();
    if list.is_empty() {
        return Err(ClientError::NoEndpoints);
    }
    let ask_within = options
        .attempt_timeout
        .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
    let mut fallback = None;
    for endpoint in &list {
        let (channel, endpoint) = match connect_channel(std::slice::from_ref(endpoint), tls).await {
            Ok(c) => c,
            Err(ClientError::Unreachable { attempts: a }) => {
                attempts.extend(a);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut clients = Clients::with_auth(channel, auth.clone(), endpoint.clone())?;
        if options.stale_ok {
            return Ok(Some(clients));
        }
        let note = |cause: String| Attempt {
            endpoint: endpoint.clone(),
            cause,
        };
        let asked = tokio::time::timeout(
            ask_within,
            clients
                .cluster
                .get_status(GetClusterStatusRequest::default()),
        )
        .await;
        let status = match asked {
            Ok(Ok(r)) => r.into_inner(),
            // A paused or cut-off replica: try the next.
            Err(_) => {
                attempts.push(note(format!(
                    "no answer within {} ms",
                    ask_within.as_millis()
                )));
                continue;
            }
            // Refused, or the connection broke (a status the transport
            // made carries its error as the source).
            Ok(Err(s))
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) || StdError::source(&s).is_some() =>
            {
                attempts.push(note(describe_status(&s)));
                fallback.get_or_insert(clients);
                continue;
            }
            // It answers but cannot say (an older scheduler, a bad token):
            // keep it, its own answers will tell.
            Ok(Err(_)) => return Ok(Some(clients)),
        };
        if status.role == ReplicaRole::Leader as i32 {
            return Ok(Some(clients));
        }
        if status.leader_address.is_empty() {
            attempts.push(note("a follower that knows no leader yet".into()));
            fallback.get_or_insert(clients);
            continue;
        }
        match connect_to(&status.leader_address, auth.clone(), tls).await {
            Ok(leader) => return Ok(Some(leader)),
            Err(ClientError::Unreachable { attempts: a }) => {
                let why = a.first().map_or_else(String::new, |a| a.cause.clone());
                attempts.push(note(format!(
                    "names {} as the leader, which is unreachable: {why}",
                    status.leader_address
                )));
                fallback.get_or_insert(clients);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(fallback)
}

/// Connects to one endpoint (as a leader hint names it).
pub async fn connect_to(
    endpoint: &str,
    auth: BearerToken,
    tls: Option<&ClientTls>,
) -> Result<Clients, ClientError> {
    let (target, endpoint) = target(endpoint, tls)?;
    match open(target).await {
        Ok(channel) => Clients::with_auth(channel, auth, endpoint),
        Err(cause) => Err(ClientError::Unreachable {
            attempts: vec![Attempt { endpoint, cause }],
        }),
    }
}

/// Opens a channel within [`CONNECT_TIMEOUT`], handshakes included (the
/// endpoint's own timeout covers only TCP, and a paused process's port
/// still accepts TCP); the cause when it fails.
async fn open(target: Endpoint) -> Result<Channel, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, target.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        // The outer error only says "transport error"; its sources say what.
        Ok(Err(e)) => Err(e.source().map_or_else(|| e.to_string(), error_chain)),
        Err(_) => Err(format!(
            "no handshake within {} ms",
            CONNECT_TIMEOUT.as_millis()
        )),
    }
}

/// The leader's address a follower names in an UNAVAILABLE status.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|a| !a.is_empty())
}

/// Connects to the first of `endpoints` that accepts a connection, trying
/// them in order. Each entry may itself be a comma-separated list. A bare
/// `host:port` means `http://host:port` (`https://` with TLS).
pub async fn connect(endpoints: &[String], token: Option<&str>) -> Result<Clients, ClientError> {
    connect_with(endpoints, token, None).await
}

/// [`connect`], over TLS when `tls` is given.
pub async fn connect_with(
    endpoints: &[String],
    token: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<Clients, ClientError> {
    // Refuse a bad token before touching the network.
    let auth = BearerToken::new(token)?;
    let (channel, endpoint) = connect_channel(endpoints, tls).await?;
    Clients::with_auth(channel, auth, endpoint)
}

/// The tonic endpoint for `endpoint`: `https://` and the CA with TLS,
/// `http://` without; and the endpoint as normalized.
fn target(endpoint: &str, tls: Option<&ClientTls>) -> Result<(Endpoint, String), ClientError> {
    let normalized = normalize_endpoint(endpoint)?;
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        endpoint: normalized.clone(),
        reason,
    };
    let endpoint = match tls {
        Some(_) => normalized.replacen("http://", "https://", 1),
        None if normalized.starts_with("https://") => {
            return Err(invalid(
                "https:// needs the CA certificate: pass --ca-cert (or EDUPOOL_CA_CERT)".into(),
            ))
        }
        None => normalized.clone(),
    };
    let mut target = Endpoint::from_shared(endpoint.clone())
        .map_err(|e| invalid(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = tls {
        target = target
            .tls_config(tls.config())
            .map_err(|e| invalid(error_chain(&e)))?;
    }
    Ok((target, endpoint))
}

/// The first of `endpoints` that accepts a connection, and which it was.
async fn connect_channel(
    endpoints: &[String],
    tls: Option<&ClientTls>,
) -> Result<(Channel, String), ClientError> {
    let endpoints = endpoints
        .iter()
        .flat_map(|e| split_endpoints(e))
        .collect::<Vec<_>>();
    if endpoints.is_empty() {
        return Err(ClientError::NoEndpoints);
    }

    let mut attempts = Vec::new();
    for endpoint in endpoints {
        let (target, endpoint) = target(&endpoint, tls)?;
        match open(target).await {
            Ok(channel) => return Ok((channel, endpoint)),
            Err(cause) => attempts.push(Attempt { endpoint, cause }),
        }
    }
    Err(ClientError::Unreachable { attempts })
}

/// Splits a comma-separated endpoint list, dropping blanks.
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `host:port` → `http://host:port`; `http://...` and `https://...`
/// unchanged (less a trailing `/`); any other scheme is refused.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let endpoint = endpoint.trim();
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(ClientError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: format!("the {scheme}:// scheme is not supported; use http:// or https://"),
        });
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(ClientError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: "no host given".into(),
        });
    }
    Ok(format!("{scheme}://{rest}"))
}

/// One endpoint that could not be reached, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub endpoint: String,
    pub cause: String,
}

/// Why no client could be made. Messages are one line and carry their cause.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no scheduler endpoint given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot reach the scheduler at {}", unreachable_list(attempts))]
    Unreachable { attempts: Vec<Attempt> },
    #[error("gave up after {} ms (--timeout); tried {}", waited.as_millis(), tried_list(attempts))]
    GaveUp {
        waited: Duration,
        attempts: Vec<Attempt>,
    },
    #[error("the token is not a valid header value: it must be printable ASCII")]
    InvalidToken,
    #[error("cannot use the CA certificate {path}: {reason}")]
    CaCert { path: String, reason: String },
}

fn tried_list(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.endpoint, a.cause))
        .collect::<Vec<_>>()
        .join("; ")
}

fn unreachable_list(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.endpoint, a.cause))
        .collect::<Vec<_>>()
        .join("; at ")
}

/// An error and its sources joined with `: `, skipping a source whose text
/// its parent already shows.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// A gRPC status for a person: its message, then its code in words, e.g.
/// `job asks for 9 GPUs but the largest node has 8 (invalid argument)`.
pub fn describe_status(status: &Status) -> String {
    let message = status.message().trim();
    let code = code_words(status.code());
    if message.is_empty() {
        code.to_owned()
    } else {
        format!("{message} ({code})")
    }
}

/// A gRPC code in lower-case words: `invalid argument`, `not found`, ...
pub fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            normalize_endpoint("10.0.0.5:7070").unwrap(),
            "http://10.0.0.5:7070"
        );
        assert_eq!(
            normalize_endpoint(" http://sched-1:7070/ ").unwrap(),
            "http://sched-1:7070"
        );
        assert_eq!(normalize_endpoint("HTTP://a:1").unwrap(), "http://a:1");
        assert_eq!(normalize_endpoint("https://a:1/").unwrap(), "https://a:1");
        let err = normalize_endpoint("ftp://a:1").unwrap_err().to_string();
        assert!(err.contains("ftp:// scheme is not supported"), "{err}");
        let err = target("https://a:1", None).unwrap_err().to_string();
        assert!(err.contains("pass --ca-cert"), "{err}");
        assert!(normalize_endpoint("http://").is_err());
    }

    #[test]
    fn endpoint_lists_are_split() {
        assert_eq!(
            split_endpoints("a:1, b:2,,c:3 "),
            vec!["a:1".to_owned(), "b:2".into(), "c:3".into()]
        );
        assert!(split_endpoints(" , ").is_empty());
    }

    #[test]
    fn bearer_token_sets_the_header() {
        let mut auth = BearerToken::new(Some("s3cret")).unwrap();
        let request = auth.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );

        let mut none = BearerToken::new(Some("")).unwrap();
        let request = none.call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());

        assert!(matches!(
            BearerToken::new(Some("bad\ntoken")),
            Err(ClientError::InvalidToken)
        ));
    }

    #[test]
    fn statuses_read_as_words() {
        let status = Status::invalid_argument("job asks for 9 GPUs but nodes have at most 8");
        assert_eq!(
            describe_status(&status),
            "job asks for 9 GPUs but nodes have at most 8 (invalid argument)"
        );
        assert_eq!(describe_status(&Status::not_found("")), "not found");
    }

    #[test]
    fn unreachable_lists_every_attempt() {
        let err = ClientError::Unreachable {
            attempts: vec![
                Attempt {
                    endpoint: "http://a:1".into(),
                    cause: "connection refused".into(),
                },
                Attempt {
                    endpoint: "http://b:2".into(),
                    cause: "timed out".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "cannot reach the scheduler at http://a:1: connection refused; at http://b:2: timed out"
        );
    }

    #[tokio::test]
    async fn connect_reports_the_cause() {
        // Bind then drop a listener: the port is very likely closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = connect(&[format!("127.0.0.1:{port}")], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot reach the scheduler at http://127.0.0.1:{port}: "
            )),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
