//! Who a certificate speaks for: its subject's common name.
//!
//! - `node:<name>`: the agent of node `<name>`;
//! - `peer:<id>`: scheduler replica `<id>`;
//! - anything else: a certificate that names neither (a server's, say).
//!
//! `edupoolctl pki` writes these names and the scheduler reads them back
//! from certificates its TLS layer has verified; both use this crate, so
//! the scheduler needs no part of the command-line tool.

#![forbid(unsafe_code)]

/// The common-name prefix of a node (agent) certificate.
pub const NODE_PREFIX: &str = "node:";
/// The common-name prefix of a scheduler replica (raft peer) certificate.
pub const PEER_PREFIX: &str = "peer:";
/// The longest node name a certificate may carry (a DNS name's limit).
pub const MAX_NODE_NAME_LEN: usize = 253;

/// A certificate that is not DER X.509.
#[derive(Debug, thiserror::Error)]
#[error("not a DER X.509 certificate: {0}")]
pub struct NotACertificate(pub String);

/// Who a verified certificate speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    Node(String),
    Peer(u64),
    /// A certificate that names neither (a server certificate, say); the
    /// common name, possibly empty.
    Other(String),
}

impl std::fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertIdentity::Node(n) => write!(f, "{NODE_PREFIX}{n}"),
            CertIdentity::Peer(id) => write!(f, "{PEER_PREFIX}{id}"),
            CertIdentity::Other(cn) if cn.is_empty() => f.write_str("a certificate with no name"),
            CertIdentity::Other(cn) => write!(f, "{cn:?}"),
        }
    }
}

/// Whether `name` may name a node in a certificate: 1 to 253 letters,
/// digits, '-', '_' or '.'.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Reads who a certificate (DER) speaks for from its common name. It does
/// not verify the certificate: the TLS layer has done that.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, NotACertificate> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| NotACertificate(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    Ok(parse_common_name(cn))
}

/// Who a common name speaks for.
pub fn parse_common_name(cn: &str) -> CertIdentity {
    if let Some(name) = cn.strip_prefix(NODE_PREFIX) {
        if is_node_name(name) {
            return CertIdentity::Node(name.to_string());
        }
    }
    if let Some(id) = cn.strip_prefix(PEER_PREFIX) {
        if let Ok(id @ 1..) = id.parse::<u64>() {
            return CertIdentity::Peer(id);
        }
    }
    CertIdentity::Other(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_map_to_identities() {
        assert_eq!(
            parse_common_name("node:gpu-01"),
            CertIdentity::Node("gpu-01".into())
        );
        assert_eq!(parse_common_name("peer:3"), CertIdentity::Peer(3));
        assert_eq!(
            parse_common_name("peer:0"),
            CertIdentity::Other("peer:0".into())
        );
        assert_eq!(
            parse_common_name("peer:x"),
            CertIdentity::Other("peer:x".into())
        );
        assert_eq!(
            parse_common_name("node:"),
            CertIdentity::Other("node:".into())
        );
        assert_eq!(
            parse_common_name("node:a b"),
            CertIdentity::Other("node:a b".into())
        );
        assert_eq!(parse_common_name(""), CertIdentity::Other(String::new()));
    }

    #[test]
    fn a_non_certificate_is_refused() {
        assert!(identity_of(b"not der").is_err());
    }
}
