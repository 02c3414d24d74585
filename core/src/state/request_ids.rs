//! Idempotent submits: a client names each submission with a request id,
//! and a retry with the same (tenant, request id) gets the first answer
//! instead of a second job.
//!
//! What is kept, per tenant and in the order seen: the request id, a
//! fingerprint of what was asked (spec and array size) and what it
//! created, stamped with the log time of the entry. An id is remembered
//! for [`REQUEST_ID_WINDOW`] of log time, and at most
//! [`REQUEST_IDS_PER_TENANT`] per tenant, the oldest forgotten first: both
//! follow from the log alone, so every replica forgets the same ones.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::command::Command;
use super::outcome::{Applied, Outcome, Rejection};
use super::types::{JobId, JobSpec, Millis};
use super::State;

/// How long (log time) a request id is remembered: a day.
pub const REQUEST_ID_WINDOW: Millis = 24 * 60 * 60 * 1000;
/// The most request ids remembered per tenant.
pub const REQUEST_IDS_PER_TENANT: usize = 10_000;

/// One remembered submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRequest {
    pub request_id: String,
    /// SHA-256 (hex, first 16 bytes) of the spec and array size asked for.
    pub fingerprint: String,
    /// The first job created; an array's jobs follow it.
    pub first: JobId,
    /// Jobs in the array; 0 for a single job.
    pub array: u32,
    /// Log time of the entry that created them.
    pub seen_at: Millis,
}

impl SeenRequest {
    /// The outcome the first submission gave.
    pub fn outcome(&self) -> Outcome {
        match self.array {
            0 => Outcome::Job(self.first),
            count => Outcome::Jobs {
                first: self.first,
                count,
            },
        }
    }
}

/// One tenant's remembered request ids, oldest first. Stored as a list;
/// the index by id is rebuilt on load (and equal lists are equal).
#[derive(Clone, Debug, Default)]
struct TenantRequests {
    order: VecDeque<SeenRequest>,
    by_id: BTreeMap<String, usize>,
    /// How many were forgotten from the front, so `by_id` positions stay
    /// valid without renumbering (`order[by_id[id] - dropped]`).
    dropped: usize,
}

impl TenantRequests {
    fn get(&self, request_id: &str) -> Option<&SeenRequest> {
        let at = self.by_id.get(request_id)?.checked_sub(self.dropped)?;
        self.order.get(at)
    }

    fn push(&mut self, seen: SeenRequest) {
        let position = self.dropped + self.order.len();
        self.by_id.insert(seen.request_id.clone(), position);
        self.order.push_back(seen);
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.order.pop_front() {
            // A later entry of the same id (the old one had expired) stays.
            if self.by_id.get(&old.request_id) == Some(&self.dropped) {
                self.by_id.remove(&old.request_id);
            }
            self.dropped += 1;
        }
    }

    /// Forgets what is older than the window, then the oldest beyond the
    /// bound, leaving room for one more.
    fn forget(&mut self, at: Millis) {
        while self
            .order
            .front()
            .is_some_and(|o| o.seen_at.saturating_add(REQUEST_ID_WINDOW) <= at)
        {
            self.pop_oldest();
        }
        while self.order.len() >= REQUEST_IDS_PER_TENANT {
            self.pop_oldest();
        }
    }
}

impl PartialEq for TenantRequests {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Eq for TenantRequests {}

impl Serialize for TenantRequests {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.order)
    }
}

impl<'de> Deserialize<'de> for TenantRequests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut t = TenantRequests::default();
        for seen in Vec::<SeenRequest>::deserialize(d)? {
            t.push(seen);
        }
        Ok(t)
    }
}

/// Every tenant's remembered request ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestIds {
    tenants: BTreeMap<String, TenantRequests>,
}

impl RequestIds {
    /// The submission `request_id` made for `tenant`, if it is still
    /// remembered at log time `at`.
    pub fn get(&self, tenant: &str, request_id: &str, at: Millis) -> Option<&SeenRequest> {
        self.tenants
            .get(tenant)?
            .get(request_id)
            .filter(|s| s.seen_at.saturating_add(REQUEST_ID_WINDOW) > at)
    }

    /// Remembers a submission that created jobs, forgetting old ones.
    pub fn remember(&mut self, tenant: &str, seen: SeenRequest) {
        let t = self.tenants.entry(tenant.to_string()).or_default();
        t.forget(seen.seen_at);
        t.push(seen);
    }

    /// Whether no tenant has a remembered id.
    pub fn is_empty(&self) -> bool {
        self.tenants.values().all(|t| t.order.is_empty())
    }

    /// How many ids are remembered for `tenant`.
    pub fn len_of(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.order.len())
    }
}

impl State {
    /// Applies a submission named by a request id: the first time, as the
    /// submission it wraps, remembering what it created; again (same
    /// tenant and id, within the window), the first outcome and nothing
    /// else, or a refusal when the content differs.
    pub(super) fn submit_once(&mut self, request_id: String, cmd: Command, at: Millis) -> Applied {
        let Some((tenant, spec, array)) = submission(&cmd) else {
            return Err(Rejection::NotASubmission);
        };
        let tenant = tenant.to_string();
        let fingerprint = fingerprint(spec, array);
        if let Some(seen) = self.request_ids.get(&tenant, &request_id, at) {
            if seen.fingerprint != fingerprint {
                return Err(Rejection::RequestIdReused {
                    request_id,
                    first: seen.first,
                });
            }
            return Ok((seen.outcome(), vec![]));
        }
        check_request_id(&request_id).map_err(Rejection::BadRequestId)?;
        let (outcome, effects) = self.apply(cmd, at)?;
        let (first, array) = match outcome {
            Outcome::Job(id) => (id, 0),
            Outcome::Jobs { first, count } => (first, count),
            _ => return Ok((outcome, effects)),
        };
        let seen = SeenRequest {
            request_id,
            fingerprint,
            first,
            array,
            seen_at: at,
        };
        self.request_ids.remember(&tenant, seen);
        Ok((outcome, effects))
    }

    /// The submission `request_id` made for `tenant`, if remembered at
    /// log time `at`.
    pub fn seen_request(&self, tenant: &str, request_id: &str, at: Millis) -> Option<&SeenRequest> {
        self.request_ids.get(tenant, request_id, at)
    }
}

/// The tenant, spec and array size of a submission, looking through an
/// audit wrapper; `None` for any other command.
pub fn submission(cmd: &Command) -> Option<(&str, &JobSpec, u32)> {
    match cmd {
        Command::SubmitJob { tenant, spec } => Some((tenant, spec, 0)),
        Command::SubmitArray {
            tenant,
            spec,
            count,
        } => Some((tenant, spec, *count)),
        Command::Audited { cmd, .. } => submission(cmd),
        _ => None,
    }
}

/// What identifies a submission's content: the same spec and array size
/// give the same fingerprint on every replica.
pub fn fingerprint(spec: &JobSpec, array: u32) -> String {
    // Serializing these plain types cannot fail; an empty text would
    // only make every spec look alike, never panic.
    let bytes = serde_json::to_vec(&(spec, array)).unwrap_or_default();
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// Checks a request id's shape: 1 to [`MAX_REQUEST_ID_LEN`] characters of
/// ASCII letters, digits and `-_.:`. The message says what is wrong.
pub fn check_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the request id is empty".into());
    }
    if id.len() > MAX_REQUEST_ID_LEN {
        return Err(format!(
            "the request id is {} characters long; at most {MAX_REQUEST_ID_LEN} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "the request id has {c:?} in it; use ASCII letters, digits and - _ . : only"
        ));
    }
    Ok(())
}

/// The longest request id accepted (a UUID is 36).
pub const MAX_REQUEST_ID_LEN: usize = 128;
