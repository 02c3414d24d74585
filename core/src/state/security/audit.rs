//! The audit trail: accepted actions kept by time, refused calls counted
//! apart (docs/security.md, "Audit trail").
//!
//! An accepted action (`Command::Audited` that applied, or a
//! `Command::RecordAudit` whose result is ok) becomes a record with the
//! next sequence number. Records are kept for `AUDIT_KEEP_MS` of log time
//! and, as a last resort, at most `AUDIT_MAX_RECORDS`; each dropped record
//! is counted by why (`edupool_audit_records_dropped_total`), and a reader
//! that asks for a dropped position is told so (`audit_after`).
//!
//! A refused call (rejected by the state, or denied by role) takes no
//! sequence number: it is counted in one aggregate per caller token,
//! action and result, with its first and last time and the latest target
//! and reason, in a table of at most `AUDIT_REFUSED_KEYS` aggregates. So
//! no caller's noise, however much of it, pushes an accepted record out.

use std::collections::btree_map::Entry;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Role;
use crate::state::types::Millis;
use crate::state::State;

/// How long accepted records are kept, in log time: 90 days.
pub const AUDIT_KEEP_MS: Millis = 90 * 24 * 3600 * 1000;

/// The most accepted records kept, whatever their age; beyond it the
/// oldest go, counted as dropped over capacity.
pub const AUDIT_MAX_RECORDS: usize = 100_000;

/// The most refused-call aggregates kept; beyond it the one seen least
/// recently goes, counted as dropped.
pub const AUDIT_REFUSED_KEYS: usize = 10_000;

/// The longest text field of an audit record, in bytes.
pub const AUDIT_FIELD_BYTES: usize = 512;

/// `text` cut to at most `AUDIT_FIELD_BYTES` on a character boundary,
/// marked with `...` where it was cut.
fn clip(mut text: String) -> String {
    if text.len() > AUDIT_FIELD_BYTES {
        let mut end = AUDIT_FIELD_BYTES - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Who did something: the token and what it stood for then.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Actor {
    pub token: String,
    pub name: String,
    pub role: Option<Role>,
    pub tenant: Option<String>,
}

/// How an audited action ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum AuditResult {
    Ok,
    /// The state refused it (unknown object, wrong state, ...).
    Rejected(String),
    /// The caller's role or tenant did not allow it.
    Denied(String),
}

impl AuditResult {
    pub fn name(&self) -> &'static str {
        match self {
            AuditResult::Ok => "ok",
            AuditResult::Rejected(_) => "rejected",
            AuditResult::Denied(_) => "denied",
        }
    }
}

/// One record of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1 and up, never reused.
    pub seq: u64,
    pub at: Millis,
    pub actor: Actor,
    /// e.g. `job.submit`, `token.revoke`, `tenant.suspend`.
    pub action: String,
    /// What it acted on: a job id, a tenant, a node, a token id.
    pub target: String,
    pub result: AuditResult,
}

/// Refused calls of one caller token, action and result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedCalls {
    pub actor: Actor,
    pub action: String,
    /// The latest refusal, with its reason.
    pub result: AuditResult,
    /// What the latest refused call named.
    pub last_target: String,
    pub first_at: Millis,
    pub last_at: Millis,
    pub count: u64,
}

/// Records and aggregates dropped so far, by why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDropped {
    /// Accepted records older than `AUDIT_KEEP_MS`.
    pub expired: u64,
    /// Accepted records dropped inside their retention window because the
    /// trail held `AUDIT_MAX_RECORDS`: loss an export must have caught.
    pub over_capacity: u64,
    /// Refused-call aggregates dropped to make room for another caller's.
    pub refused: u64,
}

/// Why records from a sequence number on cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditGap {
    /// Records `first_missing` up to `oldest - 1` were dropped.
    Dropped { first_missing: u64, oldest: u64 },
    /// No record has the number yet: `last` is the newest.
    Ahead { last: u64 },
}

impl State {
    /// The retained audit trail, oldest first.
    pub fn audit(&self) -> impl DoubleEndedIterator<Item = &AuditRecord> {
        self.security.audit.iter().map(|r| &**r)
    }

    /// The sequence number of the newest accepted record (0: none yet).
    pub fn last_audit_seq(&self) -> u64 {
        self.security.last_audit
    }

    /// Every record after sequence number `after`, oldest first; a gap
    /// when some of them were dropped, or `after` is past the newest.
    /// Sequence numbers are consecutive, so the position is arithmetic.
    pub fn audit_after(&self, after: u64) -> Result<impl Iterator<Item = &AuditRecord>, AuditGap> {
        let trail = &self.security.audit;
        let last = self.security.last_audit;
        if after > last {
            return Err(AuditGap::Ahead { last });
        }
        let oldest = last + 1 - trail.len() as u64;
        if after + 1 < oldest {
            return Err(AuditGap::Dropped {
                first_missing: after + 1,
                oldest,
            });
        }
        let skip = (after + 1 - oldest) as usize;
        Ok(trail.range(skip..).map(|r| &**r))
    }

    /// The refused-call aggregates, by caller token, action and result.
    pub fn refused_calls(&self) -> impl Iterator<Item = &RefusedCalls> {
        self.security.refused.values()
    }

    pub fn audit_dropped(&self) -> &AuditDropped {
        &self.security.audit_dropped
    }

    pub(in crate::state) fn record_audit(
        &mut self,
        actor: Actor,
        action: String,
        target: String,
        result: AuditResult,
        at: Millis,
    ) {
        // A record's text comes partly from callers (a rejected tenant
        // name, say): each field is clipped, so the trail's size stays
        // bounded by its bounds.
        let actor = Actor {
            token: clip(actor.token),
            name: clip(actor.name),
            role: actor.role,
            tenant: actor.tenant.map(clip),
        };
        let (action, target) = (clip(action), clip(target));
        match result {
            AuditResult::Ok => self.keep_record(actor, action, target, at),
            AuditResult::Rejected(d) => {
                let result = AuditResult::Rejected(clip(d));
                self.count_refused(actor, action, target, result, at)
            }
            AuditResult::Denied(d) => {
                let result = AuditResult::Denied(clip(d));
                self.count_refused(actor, action, target, result, at)
            }
        }
    }

    fn keep_record(&mut self, actor: Actor, action: String, target: String, at: Millis) {
        let sec = &mut self.security;
        sec.last_audit += 1;
        sec.audit.push_back(Arc::new(AuditRecord {
            seq: sec.last_audit,
            at,
            actor,
            action,
            target,
            result: AuditResult::Ok,
        }));
        let cutoff = at.saturating_sub(AUDIT_KEEP_MS);
        while sec.audit.front().is_some_and(|r| r.at < cutoff) {
            sec.audit.pop_front();
            sec.audit_dropped.expired += 1;
        }
        while sec.audit.len() > AUDIT_MAX_RECORDS {
            sec.audit.pop_front();
            sec.audit_dropped.over_capacity += 1;
        }
    }

    fn count_refused(
        &mut self,
        actor: Actor,
        action: String,
        target: String,
        result: AuditResult,
        at: Millis,
    ) {
        let sec = &mut self.security;
        let key = format!("{}\n{}\n{}", actor.token, action, result.name());
        match sec.refused.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                let calls = e.get_mut();
                calls.count += 1;
                calls.last_at = calls.last_at.max(at);
                calls.last_target = target;
                calls.result = result;
                // The token's name or tenant as it is now.
                calls.actor = actor;
                return;
            }
            Entry::Vacant(e) => {
                e.insert(RefusedCalls {
                    actor,
                    action,
                    result,
                    last_target: target,
                    first_at: at,
                    last_at: at,
                    count: 1,
                });
            }
        }
        if sec.refused.len() > AUDIT_REFUSED_KEYS {
            // The aggregate seen least recently goes (ties by key, so
            // every replica drops the same one), never the one just made.
            let stale = sec
                .refused
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(k, c)| (c.last_at, *k))
                .map(|(k, _)| k.clone());
            if let Some(k) = stale {
                sec.refused.remove(&k);
                sec.audit_dropped.refused += 1;
            }
        }
    }
}
