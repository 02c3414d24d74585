//! Transport security: the scheduler's TLS configuration (one listener
//! serves clients, agents and raft peers), and who a connection's client
//! certificate speaks for.
//!
//! Client certificates are optional at the handshake, because tenants and
//! admins authenticate with tokens; a certificate that is presented must
//! chain to the alliance's CA and be in its validity period, or the
//! handshake fails. The services that need one check it themselves: an
//! agent session needs `node:<its node>` ([`check_node`]), raft traffic
//! needs `peer:<the sending replica>` (`edupool_raft::peer_auth`). The
//! naming convention lives in `edupool-identity`, shared with `edupoolctl
//! pki`, which issues the certificates.

use std::path::{Path, PathBuf};

use edupool_identity::CertIdentity;
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::Status;

/// The PEM files a replica serves and calls its peers with.
#[derive(Clone)]
pub struct TlsConfig {
    /// The alliance's CA: what client and peer certificates must chain to.
    ca_pem: Vec<u8>,
    /// This replica's certificate (`peer:<id>` in a replica set) and key.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM {what}", path.display())]
    NotPem { path: PathBuf, what: &'static str },
}

impl TlsConfig {
    /// Reads the CA certificate, this replica's certificate and its key.
    pub fn from_files(ca_cert: &Path, cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            ca_pem: read_pem(ca_cert, "CERTIFICATE", "certificate")?,
            cert_pem: read_pem(cert, "CERTIFICATE", "certificate")?,
            key_pem: read_pem(key, "PRIVATE KEY", "private key")?,
        })
    }

    /// The listener's side: this certificate, and client certificates
    /// verified against the CA when presented.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// The raft client's side: the peer must show a certificate from the
    /// CA for the address it is reached at, and this replica shows its own.
    pub fn peer_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn read_pem(path: &Path, label: &str, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // "PRIVATE KEY" also matches "EC PRIVATE KEY" and "RSA PRIVATE KEY".
    if !String::from_utf8_lossy(&bytes).contains(&format!("{label}-----")) {
        return Err(TlsError::NotPem {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(bytes)
}

/// Who the verified client certificate of a request speaks for; the
/// raft transport reads peers' certificates the same way.
pub use edupool_raft::peer_auth::client_identity;

/// An agent may speak only for the node its certificate names.
pub fn check_node(identity: Option<&CertIdentity>, node: &str) -> Result<(), Status> {
    match identity {
        Some(CertIdentity::Node(n)) if n == node => Ok(()),
        Some(CertIdentity::Node(n)) => Err(Status::permission_denied(format!(
            "the agent's certificate is for node {n:?}; it may not speak for node {node:?}"
        ))),
        Some(other) => Err(Status::permission_denied(format!(
            "an agent session for node {node:?} needs a node:{node} certificate, not {other}"
        ))),
        None => Err(Status::unauthenticated(format!(
            "an agent session for node {node:?} needs a client certificate (node:{node}) from the alliance's CA"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_node_certificate_speaks_for_its_node_only() {
        let a = CertIdentity::Node("node-a".into());
        assert!(check_node(Some(&a), "node-a").is_ok());
        let denied = check_node(Some(&a), "node-b").unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            denied.message().contains("\"node-a\""),
            "{}",
            denied.message()
        );
        assert!(
            denied.message().contains("\"node-b\""),
            "{}",
            denied.message()
        );
        let peer = check_node(Some(&CertIdentity::Peer(1)), "node-a").unwrap_err();
        assert_eq!(peer.code(), Code::PermissionDenied);
        assert_eq!(
            check_node(None, "node-a").unwrap_err().code(),
            Code::Unauthenticated
        );
    }
}
