//! TLS for the processes a test starts: a CA per test, in the test's
//! temporary directory (`<dir>/pki`), and the certificates each process
//! shows, issued on first use.
//!
//! Replicas serve with a `peer:<id>` certificate for 127.0.0.1 and
//! localhost, agents connect with `node:<name>`, `edupoolctl` and the load
//! clients trust the CA. Which CA vouches for a scheduler address is kept
//! in a process-wide table ([`trust`], [`ca_for`]), so helpers that are
//! given only endpoints (`Cluster::ctl_at`, `LeaderClient`) find it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use edupoolctl::client::ClientTls;
use edupoolctl::pki::{Ca, CertKind, PkiDir, Validity, CA_CERT_FILE};

/// The CA of one test and the certificates it issued.
pub struct TestPki {
    pki: PkiDir,
}

impl TestPki {
    /// The CA in `<dir>/pki`, created on first use.
    pub fn open(dir: &Path) -> Result<TestPki> {
        let pki_dir = dir.join("pki");
        // One test may start several processes at once from threads.
        static CREATE: Mutex<()> = Mutex::new(());
        let _one = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        let pki = if pki_dir.join(CA_CERT_FILE).exists() {
            PkiDir {
                ca: Ca::load(&pki_dir)?,
                dir: pki_dir,
            }
        } else {
            PkiDir::create(&pki_dir, "edupool test CA")?
        };
        Ok(TestPki { pki })
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.pki.ca_cert()
    }

    /// The certificate and key of `kind`, issued (valid for a day) unless
    /// they exist.
    pub fn cert(&self, kind: &CertKind) -> Result<(PathBuf, PathBuf)> {
        let stem = kind.file_stem();
        let cert = self.pki.dir.join(format!("{stem}.pem"));
        let key = self.pki.dir.join(format!("{stem}-key.pem"));
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        self.pki
            .issue(kind, Validity::days(1))
            .with_context(|| format!("issuing {stem}"))
    }

    /// `--ca-cert`, `--cert` and `--key` for replica `id`.
    pub fn serve_args(&self, id: u64) -> Result<Vec<OsString>> {
        let (cert, key) = self.cert(&CertKind::Peer {
            id,
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
        })?;
        Ok(self.args(&cert, &key))
    }

    /// `--ca-cert`, `--cert` and `--key` for the agent of `node`.
    pub fn agent_args(&self, node: &str) -> Result<Vec<OsString>> {
        let (cert, key) = self.cert(&CertKind::Node(node.to_string()))?;
        Ok(self.args(&cert, &key))
    }

    /// Issues `kind` with `validity` under another name (`stem`), e.g. an
    /// expired certificate; returns (cert, key).
    pub fn issue_as(
        &self,
        kind: &CertKind,
        validity: Validity,
        stem: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let [cert, key] = self
            .pki
            .ca
            .issue(kind, validity)?
            .write(&self.pki.dir, stem, true)?;
        Ok((cert, key))
    }

    fn args(&self, cert: &Path, key: &Path) -> Vec<OsString> {
        vec![
            "--ca-cert".into(),
            self.ca_cert().into(),
            "--cert".into(),
            cert.into(),
            "--key".into(),
            key.into(),
        ]
    }
}

fn table() -> &'static Mutex<HashMap<String, PathBuf>> {
    static TABLE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// `host:port` of an endpoint (`http://`, `https://` or bare).
fn host_port(endpoint: &str) -> String {
    let rest = endpoint
        .trim()
        .split_once("://")
        .map_or(endpoint.trim(), |(_, r)| r);
    rest.trim_end_matches('/').to_string()
}

/// Records that the scheduler at `addr` (`host:port`) shows a certificate
/// from the CA `ca_cert`.
pub fn trust(addr: &str, ca_cert: &Path) {
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(host_port(addr), ca_cert.to_path_buf());
}

/// The CA that vouches for the first of `endpoints` (comma-separated).
pub fn ca_for(endpoints: &str) -> Option<PathBuf> {
    let first = endpoints.split(',').find(|e| !e.trim().is_empty())?;
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&host_port(first))
        .cloned()
}

/// [`ca_for`] as a client's TLS settings.
pub fn client_tls_for(endpoints: &str) -> Option<ClientTls> {
    ca_for(endpoints).and_then(|ca| ClientTls::from_file(&ca).ok())
}
