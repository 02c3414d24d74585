//! The `google.rpc.Status` detail that carries a `google.rpc.RetryInfo`,
//! encoded with prost (the message shapes are Google's, field numbers
//! included), so gRPC clients with rich-error support read the delay.

use std::time::Duration;

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RESOURCE_EXHAUSTED: i32 = 8;

/// The bytes of a `grpc-status-details-bin` trailer saying "retry after
/// `wait`".
pub fn encode(wait: Duration) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: wait.as_secs() as i64,
            nanos: wait.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code: RESOURCE_EXHAUSTED,
        message: String::new(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// The delay in a status detail from `encode`, for clients and tests.
pub fn decode(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.RetryInfo"))?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        d.seconds.max(0) as u64,
        d.nanos.max(0) as u32,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_delay_round_trips() {
        let d = std::time::Duration::from_millis(1234);
        assert_eq!(super::decode(&super::encode(d)), Some(d));
    }
}
