//! The cluster CA and the per-node certificates (`tandem cert init|issue`).
//!
//! Each node proves who it is on the sync channel with a certificate signed
//! by the cluster's own CA; a node trusts exactly that CA and nothing else,
//! so a certificate from any other CA — public ones included — is refused.
//! The node name goes in the certificate's DNS subject alternative name,
//! which lets rustls check it like a host name.
//!
//! Keys are ECDSA P-256 (rcgen's default), which rustls with ring verifies.
//!
//! Files:
//!
//! ```text
//! CA dir (keep it off the nodes)     node dir (on each node)
//!   ca.pem   the CA certificate        NODE.pem  the node's certificate
//!   ca.key   its key, 0600             NODE.key  its key, 0600
//!   ca.name  the CA's common name      ca.pem    the CA certificate
//! ```
//!
//! `ca.name` exists because re-creating the issuer to sign a node
//! certificate needs the CA's distinguished name, and reading it back from
//! `ca.pem` would need an X.509 parser (rcgen's `x509-parser` feature pulls
//! in a dozen crates); the name is all we need, so we keep it beside.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

use crate::{Error, Result, io_err};

/// The CA certificate's file name (in the CA dir and in each node dir).
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca.key";
/// The file holding the CA's common name.
pub const CA_NAME: &str = "ca.name";

/// The files [`init`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA certificate.
    pub cert: PathBuf,
    /// The CA key (mode 0600).
    pub key: PathBuf,
}

/// The files [`issue`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// The node certificate.
    pub cert: PathBuf,
    /// The node key (mode 0600).
    pub key: PathBuf,
    /// A copy of the CA certificate, the only trust anchor of the node.
    pub ca: PathBuf,
}

/// Makes a new cluster CA in `dir` (created if needed). Refuses to replace
/// an existing CA: every node certificate it signed would stop working.
pub fn init(dir: &Path) -> Result<CaFiles> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    for existing in [&cert_path, &key_path] {
        if existing.exists() {
            return Err(Error::BadFile {
                path: existing.clone(),
                message: "a cluster CA already exists here; a new one would invalidate every \
                          node certificate. Remove the directory first if that is what you want"
                    .into(),
            });
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;

    let key = KeyPair::generate().map_err(|e| Error::Cert(e.to_string()))?;
    // A name unique to this CA, so two clusters' CAs never look alike in
    // logs or in a chain-building error.
    let fingerprint: String = Sha256::digest(key.public_key_raw())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("tandem cluster CA {fingerprint}");
    let params = ca_params(&name);
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Cert(e.to_string()))?;

    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, true)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644, true)?;
    write_file(
        &dir.join(CA_NAME),
        format!("{name}\n").as_bytes(),
        0o644,
        true,
    )?;
    Ok(CaFiles {
        cert: cert_path,
        key: key_path,
    })
}

/// Issues a certificate for `node` signed by the CA in `ca_dir`, into
/// `out_dir` as `NODE.pem`, `NODE.key` and `ca.pem`. Re-issuing replaces
/// the node's files.
pub fn issue(ca_dir: &Path, node: &str, out_dir: &Path) -> Result<NodeFiles> {
    // The name must be usable as a TLS server name, since that is how the
    // dialing side checks it.
    if ServerName::try_from(node.to_string()).is_err() || node.parse::<std::net::IpAddr>().is_ok() {
        return Err(Error::Cert(format!(
            "node name {node:?} cannot go in a certificate: use letters, digits, '-' and '.' \
             (a DNS name)"
        )));
    }
    let init_hint = format!("run `tandem cert init {}` first", ca_dir.display());
    let ca_key_pem = read_required(&ca_dir.join(CA_KEY), &init_hint)?;
    let ca_cert_pem = read_required(&ca_dir.join(CA_CERT), &init_hint)?;
    let ca_name = read_required(&ca_dir.join(CA_NAME), &init_hint)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| Error::BadFile {
        path: ca_dir.join(CA_KEY),
        message: format!("not a usable CA key: {e}"),
    })?;
    let issuer = Issuer::new(ca_params(ca_name.trim()), ca_key);

    let key = KeyPair::generate().map_err(|e| Error::Cert(e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![node.to_string()]).map_err(|e| Error::Cert(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both: it dials peers when active and accepts them always.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| Error::Cert(e.to_string()))?;

    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let files = NodeFiles {
        cert: out_dir.join(format!("{node}.pem")),
        key: out_dir.join(format!("{node}.key")),
        ca: out_dir.join(CA_CERT),
    };
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600, false)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644, false)?;
    write_file(&files.ca, ca_cert_pem.as_bytes(), 0o644, false)?;
    Ok(files)
}

/// The CA's parameters. Deterministic from `name`, because [`issue`] must
/// rebuild the same issuer distinguished name the CA certificate carries.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    // Constrained(0): the CA signs node certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Reads a text file that some earlier command should have made.
pub(crate) fn read_required(path: &Path, hint: &str) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::MissingFile {
            path: path.to_path_buf(),
            hint: hint.to_string(),
        }),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Writes a file whole with `mode` from its creation on (a key must never
/// exist world-readable, not even for an instant): into a temporary name,
/// fsync'd, then renamed over. `exclusive` refuses to replace `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32, exclusive: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    if exclusive && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            message: "already exists".into(),
        });
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}
