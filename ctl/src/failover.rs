//! Running one command against a replica set until it succeeds, fails for
//! good, or the overall deadline passes.
//!
//! The rule ([`verdict`]): a call is tried again, on the leader a follower
//! names or else on the next endpoint, when it
//! - could not connect, or was refused with UNAVAILABLE (a follower, a
//!   replica with no leader, a leader that could not commit in time);
//! - ran past its deadline or lost its connection (DEADLINE_EXCEEDED,
//!   CANCELLED, UNKNOWN, or any status the transport made) and is safe to
//!   repeat: a read, or a submit that carries a request id;
//! - was refused with RESOURCE_EXHAUSTED and a retry-after.
//!
//! Between tries it waits a backoff that doubles from
//! [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], or the server's retry-after when
//! longer. When the deadline passes, the error lists every endpoint tried
//! and what it last answered.

use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::client::{
    self, describe_status, leader_hint, Attempt, BearerToken, ClientError, Clients, ConnectOptions,
};

/// The first wait between tries.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between tries (unless the server asks for more).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Response metadata with the milliseconds a rate-limited call should wait.
pub const RETRY_AFTER_MS_METADATA: &str = "x-edupool-retry-after-ms";

/// What to do after a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The answer stands (a refusal, or an outcome that a repeat could
    /// double).
    Final,
    /// Try again: at `leader` first when a follower named it, not before
    /// `after` when the server said so.
    Retry {
        leader: Option<String>,
        after: Option<Duration>,
    },
}

/// Whether a failed call is tried again; `repeatable` says whether the
/// call is safe to run twice (reads, submits with a request id).
pub fn verdict(status: &Status, repeatable: bool) -> Verdict {
    let after = retry_after(status);
    match status.code() {
        Code::Unavailable => Verdict::Retry {
            leader: leader_hint(status),
            after,
        },
        _ if repeatable && outcome_unknown(status) => Verdict::Retry {
            leader: None,
            after,
        },
        Code::ResourceExhausted if after.is_some() => Verdict::Retry {
            leader: None,
            after,
        },
        _ => Verdict::Final,
    }
}

/// Whether the call may or may not have been applied: it ran past its
/// deadline, or its connection broke (a status made by the transport,
/// not sent by a server, carries the transport's error as its source).
pub fn outcome_unknown(status: &Status) -> bool {
    use std::error::Error as _;
    matches!(
        status.code(),
        Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    ) || status.source().is_some()
}

/// The wait a server asks for: `x-edupool-retry-after-ms`, or
/// `retry-after` in whole seconds.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let read = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    read(RETRY_AFTER_MS_METADATA)
        .map(Duration::from_millis)
        .or_else(|| read("retry-after").map(Duration::from_secs))
}

/// One command's tries across the endpoints, within a deadline.
#[derive(Debug)]
pub struct Failover {
    endpoints: Vec<String>,
    options: ConnectOptions,
    auth: BearerToken,
    started: Instant,
    timeout: Duration,
    /// Where the next search for the leader starts in `endpoints`.
    next: usize,
    /// The leader a follower named in its last refusal.
    hint: Option<String>,
    backoff: Duration,
    tried: Vec<Attempt>,
}

impl Failover {
    /// Tries `endpoints` (each may be a comma-separated list) for at most
    /// `timeout` in all.
    pub fn new(
        endpoints: &[String],
        auth: BearerToken,
        options: ConnectOptions,
        timeout: Duration,
    ) -> Failover {
        Failover {
            endpoints: endpoints
                .iter()
                .flat_map(|e| client::split_endpoints(e))
                .collect(),
            options,
            auth,
            started: Instant::now(),
            timeout,
            next: 0,
            hint: None,
            backoff: FIRST_BACKOFF,
            tried: Vec::new(),
        }
    }

    /// Clients of the leader as far as can be found: the named leader
    /// first, then the endpoints from the one after the last that failed.
    /// `Ok(None)`: nothing answered this round (noted for the error).
    /// Each call gets the attempt timeout, or what is left of the
    /// overall deadline when less.
    pub async fn connect(&mut self) -> Result<Option<Clients>, ClientError> {
        let left = self.left();
        let deadline = self.options.attempt_timeout.map_or(left, |t| t.min(left));
        let auth = self.auth.clone().deadline(Some(deadline));
        if let Some(leader) = self.hint.take() {
            let tls = self.options.tls.as_ref();
            match client::connect_to(&leader, auth.clone(), tls).await {
                Ok(clients) => return Ok(Some(clients)),
                Err(ClientError::Unreachable { attempts }) => self.tried.extend(attempts),
                Err(e) => return Err(e),
            }
        }
        let mut order = self.endpoints.clone();
        let shift = self.next % order.len().max(1);
        order.rotate_left(shift);
        client::find_leader(&order, &auth, &self.options, &mut self.tried).await
    }

    /// Notes that the call on `endpoint` failed with `status`, to follow
    /// `leader` next if one was named.
    pub fn failed(&mut self, endpoint: &str, status: &Status, leader: Option<String>) {
        self.tried.push(Attempt {
            endpoint: endpoint.to_owned(),
            cause: describe_status(status),
        });
        let position = self
            .endpoints
            .iter()
            .position(|e| client::normalize_endpoint(e).is_ok_and(|n| same_endpoint(&n, endpoint)));
        self.next = match position {
            Some(p) => p + 1,
            None => self.next + 1,
        };
        self.hint = leader.filter(|l| !same_endpoint(l, endpoint));
    }

    /// Waits before the next try: the backoff, or `after` when longer.
    /// `false` when the deadline would pass first (nothing is waited).
    pub async fn pause(&mut self, after: Option<Duration>) -> bool {
        let wait = after.map_or(self.backoff, |a| a.max(self.backoff));
        let left = self.timeout.saturating_sub(self.started.elapsed());
        if wait >= left {
            return false;
        }
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        true
    }

    /// Whether every endpoint so far failed on a certificate the client
    /// does not trust: a retry cannot change that.
    pub fn untrusted(&self) -> bool {
        !self.tried.is_empty() && self.tried.iter().all(|a| a.cause.contains("certificate"))
    }

    /// The error when no endpoint could be reached this round, each with
    /// why.
    pub fn unreachable(&self) -> ClientError {
        ClientError::Unreachable {
            attempts: self.tried.clone(),
        }
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.timeout.saturating_sub(self.started.elapsed())
    }

    /// The error when the deadline passed: every endpoint tried, with how
    /// often and what it last answered.
    pub fn gave_up(&self) -> ClientError {
        let mut seen: Vec<(String, usize, String)> = Vec::new();
        for a in &self.tried {
            match seen
                .iter_mut()
                .find(|(e, _, _)| same_endpoint(e, &a.endpoint))
            {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 = a.cause.clone();
                }
                None => seen.push((a.endpoint.clone(), 1, a.cause.clone())),
            }
        }
        ClientError::GaveUp {
            waited: self.started.elapsed(),
            attempts: seen
                .into_iter()
                .map(|(endpoint, n, cause)| Attempt {
                    endpoint: if n > 1 {
                        format!("{endpoint} ({n} tries)")
                    } else {
                        endpoint
                    },
                    cause,
                })
                .collect(),
        }
    }
}

/// Whether two endpoints name the same place, with or without a scheme.
fn same_endpoint(a: &str, b: &str) -> bool {
    let bare = |e: &str| {
        let e = e.trim().trim_end_matches('/');
        e.split_once("://").map_or(e, |(_, rest)| rest).to_owned()
    };
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_meta(mut s: Status, key: &'static str, value: &str) -> Status {
        s.metadata_mut().insert(key, value.parse().unwrap());
        s
    }

    #[test]
    fn unavailable_is_retried_at_the_named_leader() {
        let s = with_meta(
            Status::unavailable("not the leader"),
            client::LEADER_METADATA,
            "10.0.0.2:7070",
        );
        assert_eq!(
            verdict(&s, false),
            Verdict::Retry {
                leader: Some("10.0.0.2:7070".into()),
                after: None
            }
        );
        let none = Status::unavailable("knows no leader yet");
        assert_eq!(
            verdict(&none, false),
            Verdict::Retry {
                leader: None,
                after: None
            }
        );
    }

    /// What tonic makes of a connection that broke mid-call.
    fn broken_connection() -> Status {
        let mut s = Status::internal("h2 protocol error: http2 error (internal error)");
        s.set_source(std::sync::Arc::new(std::io::Error::other("reset")));
        s
    }

    #[test]
    fn a_timeout_is_retried_only_when_the_call_is_safe_to_repeat() {
        for s in [
            Status::deadline_exceeded("late"),
            Status::cancelled("Timeout expired"),
            Status::unknown("connection reset"),
            broken_connection(),
        ] {
            assert_eq!(verdict(&s, false), Verdict::Final, "{s:?}");
            assert!(matches!(verdict(&s, true), Verdict::Retry { .. }), "{s:?}");
        }
    }

    #[test]
    fn refusals_are_final_and_a_retry_after_is_honoured() {
        for s in [
            Status::invalid_argument("bad spec"),
            Status::permission_denied("no"),
            Status::already_exists("request id reused"),
            Status::resource_exhausted("too many pending jobs"),
        ] {
            assert_eq!(verdict(&s, true), Verdict::Final, "{s:?}");
        }
        let limited = with_meta(
            Status::resource_exhausted("over its rate"),
            RETRY_AFTER_MS_METADATA,
            "250",
        );
        assert_eq!(
            verdict(&limited, false),
            Verdict::Retry {
                leader: None,
                after: Some(Duration::from_millis(250))
            }
        );
        let secs = with_meta(Status::unavailable("busy"), "retry-after", "3");
        assert_eq!(retry_after(&secs), Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn giving_up_lists_every_endpoint_and_its_last_answer() {
        let endpoints = vec!["a:1,b:2".to_string()];
        let mut f = Failover::new(
            &endpoints,
            BearerToken::default(),
            ConnectOptions::default(),
            Duration::from_millis(50),
        );
        f.failed("http://a:1", &Status::unavailable("no leader"), None);
        f.failed("http://b:2", &Status::unavailable("no leader"), None);
        f.failed("http://a:1", &Status::unavailable("shutting down"), None);
        assert_eq!(f.next, 1);
        let err = f.gave_up().to_string();
        assert!(
            err.contains("http://a:1 (2 tries): shutting down (unavailable)"),
            "{err}"
        );
        assert!(err.contains("http://b:2: no leader (unavailable)"), "{err}");
        // The deadline is near: no more waiting.
        assert!(!f.pause(Some(Duration::from_secs(1))).await);
    }

    #[test]
    fn a_hint_naming_the_failed_replica_is_not_followed() {
        let mut f = Failover::new(
            &["a:1".into(), "b:2".into()],
            BearerToken::default(),
            ConnectOptions::default(),
            Duration::from_secs(1),
        );
        f.failed("http://a:1", &Status::unavailable("x"), Some("a:1".into()));
        assert_eq!(f.hint, None);
        f.failed("http://a:1", &Status::unavailable("x"), Some("b:2".into()));
        assert_eq!(f.hint.as_deref(), Some("b:2"));
    }
}
