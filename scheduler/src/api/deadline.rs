//! How long a call may wait for its proposal to commit: the caller's own
//! deadline (`grpc-timeout`), less a margin so the answer still reaches it
//! in time, and never more than a server bound. A leader cut off from its
//! peers then answers UNAVAILABLE instead of holding the call open.

use std::future::Future;
use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The longest any call waits for its proposal to commit.
pub const COMMIT_WAIT_BOUND: Duration = Duration::from_secs(10);

/// The longest margin kept between the commit wait and the caller's
/// deadline, for the answer's way back.
const REPLY_MARGIN: Duration = Duration::from_millis(100);

/// The caller's deadline as `grpc-timeout` states it (`<digits><unit>`,
/// unit one of `H M S m u n`); `None` when absent or malformed.
pub fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long a proposal may wait: the smaller of the caller's deadline
/// (less the reply margin) and [`COMMIT_WAIT_BOUND`].
pub fn commit_wait(metadata: &MetadataMap) -> Duration {
    match caller_timeout(metadata) {
        Some(t) => t
            .saturating_sub(REPLY_MARGIN.min(t / 10))
            .min(COMMIT_WAIT_BOUND),
        None => COMMIT_WAIT_BOUND,
    }
}

/// Runs `commit` for at most `limit`; `None` when it took longer (the
/// proposal may still commit later: its outcome is unknown).
pub async fn within<T>(limit: Duration, commit: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, commit).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", value.parse().unwrap());
        m
    }

    #[test]
    fn the_callers_deadline_is_read() {
        assert_eq!(
            caller_timeout(&with_timeout("2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            caller_timeout(&with_timeout("1500m")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(caller_timeout(&with_timeout("5x")), None);
        assert_eq!(caller_timeout(&with_timeout("S")), None);
        assert_eq!(caller_timeout(&with_timeout("123456789S")), None);
        assert_eq!(caller_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn the_wait_is_the_smaller_bound() {
        assert_eq!(commit_wait(&MetadataMap::new()), COMMIT_WAIT_BOUND);
        assert_eq!(commit_wait(&with_timeout("1H")), COMMIT_WAIT_BOUND);
        assert_eq!(
            commit_wait(&with_timeout("2S")),
            Duration::from_millis(1900)
        );
        assert_eq!(commit_wait(&with_timeout("20m")), Duration::from_millis(18));
    }
}
