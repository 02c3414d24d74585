//! Who may speak for a replica: over TLS, raft traffic from replica
//! `from` must come with its `peer:<from>` client certificate. The naming
//! convention lives in `edupool-identity`; the listener's TLS setup lives
//! with the scheduler, which serves `RaftService` beside its other services.

use edupool_identity::{identity_of, CertIdentity};
use tonic::{Request, Status};

/// Who the verified client certificate of `request` speaks for; `None`
/// without TLS or without a client certificate.
pub fn client_identity<T>(request: &Request<T>) -> Option<CertIdentity> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(identity_of(leaf).unwrap_or(CertIdentity::Other(String::new())))
}

/// Raft messages from replica `from` need its `peer:<from>` certificate.
pub fn check_peer(identity: Option<&CertIdentity>, from: u64) -> Result<(), Status> {
    match identity {
        Some(CertIdentity::Peer(id)) if *id == from => Ok(()),
        Some(CertIdentity::Peer(id)) => Err(Status::permission_denied(format!(
            "the peer's certificate is for replica {id}; it may not speak for replica {from}"
        ))),
        Some(other) => Err(Status::permission_denied(format!(
            "raft traffic from replica {from} needs a peer:{from} certificate, not {other}"
        ))),
        None => Err(Status::unauthenticated(format!(
            "raft traffic from replica {from} needs a client certificate (peer:{from}) from the alliance's CA"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_peer_certificate_speaks_for_its_replica_only() {
        assert!(check_peer(Some(&CertIdentity::Peer(2)), 2).is_ok());
        let denied = check_peer(Some(&CertIdentity::Peer(2)), 3).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        let node = check_peer(Some(&CertIdentity::Node("n".into())), 3).unwrap_err();
        assert_eq!(node.code(), Code::PermissionDenied);
        assert_eq!(
            check_peer(None, 3).unwrap_err().code(),
            Code::Unauthenticated
        );
    }
}
