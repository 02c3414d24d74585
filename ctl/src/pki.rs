//! The alliance's certificate authority and the certificates it issues
//! (ECDSA P-256, with `rcgen`): what `edupoolctl pki` writes, and what the
//! end-to-end tests generate for each test.
//!
//! Who a certificate speaks for is its subject's common name:
//!
//! - `node:<name>`: the agent of node `<name>` (client authentication only);
//! - `peer:<id>`: scheduler replica `<id>` (server and client
//!   authentication, with the replica's DNS names and IP addresses as
//!   subject alternative names);
//! - anything else: a server certificate for a scheduler (its DNS names and
//!   IP addresses), which speaks for no node and no replica.
//!
//! [`identity_of`] (from `edupool-identity`, which the scheduler shares)
//! reads this back from a certificate the TLS layer has already verified
//! against the CA.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

pub use edupool_identity::{
    identity_of, parse_common_name, CertIdentity, NotACertificate, NODE_PREFIX, PEER_PREFIX,
};
/// The CA's certificate in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key in a PKI directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Why a CA or certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{what}: {source}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid node name {0:?}: expected 1 to 253 letters, digits, '-', '_' or '.'")]
    NodeName(String),
    #[error("replica ids start at 1")]
    PeerId,
    #[error("a server certificate needs at least one --dns name or --ip address")]
    NoHosts,
    #[error("invalid DNS name {0:?}")]
    DnsName(String),
    #[error("the validity ends before it starts")]
    Validity,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days; `0`
    /// gives a certificate that expires as it is made.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// A validity that ended a day ago, for testing that expired
    /// certificates are refused.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }
}

/// What a certificate is for, and so what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// An agent: client certificate `node:<name>`.
    Node(String),
    /// A scheduler replica: `peer:<id>`, for its listener and for raft
    /// traffic to the other replicas.
    Peer { id: u64, hosts: Vec<String> },
    /// A scheduler listener that is no raft peer (e.g. a single replica).
    Server { hosts: Vec<String> },
}

impl CertKind {
    /// The file stem `edupoolctl pki` writes it under.
    pub fn file_stem(&self) -> String {
        match self {
            CertKind::Node(name) => format!("node-{name}"),
            CertKind::Peer { id, .. } => format!("peer-{id}"),
            CertKind::Server { .. } => "server".to_string(),
        }
    }

    fn common_name(&self) -> String {
        match self {
            CertKind::Node(name) => format!("{NODE_PREFIX}{name}"),
            CertKind::Peer { id, .. } => format!("{PEER_PREFIX}{id}"),
            CertKind::Server { hosts } => hosts.first().cloned().unwrap_or_default(),
        }
    }

    fn validate(&self) -> Result<(), PkiError> {
        match self {
            CertKind::Node(name) => {
                if !edupool_identity::is_node_name(name) {
                    return Err(PkiError::NodeName(name.clone()));
                }
            }
            CertKind::Peer { id: 0, .. } => return Err(PkiError::PeerId),
            CertKind::Peer { .. } => {}
            CertKind::Server { hosts } if hosts.is_empty() => return Err(PkiError::NoHosts),
            CertKind::Server { .. } => {}
        }
        Ok(())
    }

    fn hosts(&self) -> &[String] {
        match self {
            CertKind::Node(_) => &[],
            CertKind::Peer { hosts, .. } | CertKind::Server { hosts } => hosts,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.pem` (0644) and `<dir>/<stem>-key.pem` (0600);
    /// returns both paths. Existing files are replaced only with `force`.
    pub fn write(&self, dir: &Path, stem: &str, force: bool) -> Result<[PathBuf; 2], PkiError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        if !force {
            for path in [&cert, &key] {
                if path.exists() {
                    return Err(PkiError::Exists { path: path.clone() });
                }
            }
        }
        fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok([cert, key])
    }
}

/// The alliance's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// A new CA named `name`, self-signed.
    pub fn generate(name: &str, validity: Validity) -> Result<Ca, PkiError> {
        check_validity(validity)?;
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("signing the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Reads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key = KeyPair::from_pem(&read_text(&key_path)?)
            .map_err(rcgen_error(&format!("reading {}", key_path.display())))?;
        // Fail here, not at the first issue, on a certificate that is not one.
        Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(rcgen_error(&format!(
            "reading {}",
            dir.join(CA_CERT_FILE).display()
        )))?;
        Ok(Ca { cert_pem, key })
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<[PathBuf; 2], PkiError> {
        Issued {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key.serialize_pem(),
        }
        .write(dir, "ca", force)
    }

    /// The CA's certificate (PEM): what clients, agents and replicas trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new key and a certificate for it, signed by this CA.
    pub fn issue(&self, kind: &CertKind, validity: Validity) -> Result<Issued, PkiError> {
        kind.validate()?;
        check_validity(validity)?;
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&kind.common_name());
        params.subject_alt_names = kind
            .hosts()
            .iter()
            .map(|h| san(h))
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            CertKind::Node(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
            CertKind::Peer { .. } => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            CertKind::Server { .. } => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_error("signing the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_error("generating a key"))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "edupool");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// An IP address, or else a DNS name.
fn san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host
        .to_string()
        .try_into()
        .map_err(|_| PkiError::DnsName(host.to_string()))?;
    Ok(SanType::DnsName(name))
}

fn check_validity(v: Validity) -> Result<(), PkiError> {
    if v.not_after < v.not_before {
        return Err(PkiError::Validity);
    }
    Ok(())
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Rcgen {
        what: what.to_string(),
        source,
    }
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes through a new file created with `mode`, so a key is never
/// readable by others, not even for a moment.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

/// A CA and its certificates in one directory, as the end-to-end tests
/// use it: a certificate per name on demand.
pub struct PkiDir {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl PkiDir {
    /// A new CA named `name`, valid for a day, written to `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<PkiDir, PkiError> {
        let ca = Ca::generate(name, Validity::days(1))?;
        ca.write(dir, true)?;
        Ok(PkiDir {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// Issues `kind` with `validity` and writes it; returns (cert, key).
    pub fn issue(
        &self,
        kind: &CertKind,
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let [cert, key] =
            self.ca
                .issue(kind, validity)?
                .write(&self.dir, &kind.file_stem(), true)?;
        Ok((cert, key))
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn der(pem_text: &str) -> Vec<u8> {
        let start = pem_text.find('\n').unwrap() + 1;
        let end = pem_text.find("-----END").unwrap();
        let b64: String = pem_text[start..end].split_whitespace().collect();
        base64_decode(&b64)
    }

    // A small decoder keeps the tests free of another dependency.
    fn base64_decode(text: &str) -> Vec<u8> {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in text.bytes().filter(|&c| c != b'=') {
            let v = ABC.iter().position(|&a| a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn certificates_name_what_they_speak_for() {
        let ca = Ca::generate("test", Validity::days(1)).unwrap();
        let node = ca
            .issue(&CertKind::Node("gpu-01".into()), Validity::days(1))
            .unwrap();
        assert_eq!(
            identity_of(&der(&node.cert_pem)).unwrap(),
            CertIdentity::Node("gpu-01".into())
        );
        let peer = ca
            .issue(
                &CertKind::Peer {
                    id: 3,
                    hosts: vec!["127.0.0.1".into(), "sched-3.example".into()],
                },
                Validity::days(1),
            )
            .unwrap();
        assert_eq!(
            identity_of(&der(&peer.cert_pem)).unwrap(),
            CertIdentity::Peer(3)
        );
        let server = ca
            .issue(
                &CertKind::Server {
                    hosts: vec!["sched.example".into()],
                },
                Validity::days(1),
            )
            .unwrap();
        assert_eq!(
            identity_of(&der(&server.cert_pem)).unwrap(),
            CertIdentity::Other("sched.example".into())
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = Ca::generate("test", Validity::days(1)).unwrap();
        let v = Validity::days(1);
        assert!(matches!(
            ca.issue(&CertKind::Node("a b".into()), v),
            Err(PkiError::NodeName(_))
        ));
        assert!(matches!(
            ca.issue(
                &CertKind::Peer {
                    id: 0,
                    hosts: vec![]
                },
                v
            ),
            Err(PkiError::PeerId)
        ));
        assert!(matches!(
            ca.issue(&CertKind::Server { hosts: vec![] }, v),
            Err(PkiError::NoHosts)
        ));
    }

    #[test]
    fn keys_are_private_and_the_ca_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test", Validity::days(1)).unwrap();
        let [cert, key] = ca.write(dir.path(), false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert!(matches!(
            ca.write(dir.path(), false),
            Err(PkiError::Exists { .. })
        ));
        let loaded = Ca::load(dir.path()).unwrap();
        let node = loaded
            .issue(&CertKind::Node("n1".into()), Validity::days(1))
            .unwrap();
        let [_, node_key] = node.write(dir.path(), "node-n1", false).unwrap();
        assert_eq!(mode(&node_key), 0o600);
    }
}
