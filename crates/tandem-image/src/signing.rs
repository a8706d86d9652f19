//! Signatures: minisign keys and `IMAGE.minisig` files, and the node's trust
//! policy.
//!
//! We use minisign's formats (ed25519, the `minisign` crate) so operators can
//! sign and check images with the `minisign` tool they may already use, and
//! we with theirs: both directions are tested against the real tool. A
//! signature is checked before anything about the image is believed, and an
//! image passes only when its signer is one of the node's `trusted_keys` —
//! or, if the node says `allow_unsigned = true`, when it has no signature at
//! all (never when it has a bad one).

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::archive::{self, ImageContents, Limits};

/// A minisign key id: 8 bytes, printed as 16 hex digits as the tool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    fn of(bytes: &[u8]) -> KeyId {
        let mut id = [0u8; 8];
        let n = bytes.len().min(8);
        id[..n].copy_from_slice(&bytes[..n]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // minisign prints the little-endian u64 of the key number.
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The path of an image's detached signature: `IMAGE.minisig`.
pub fn signature_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Makes a key pair and writes the secret key (mode 0600, refusing to
/// overwrite) and the public key; with a password the secret key is
/// encrypted as the `minisign` tool does. Returns the key id.
pub fn keygen(secret: &Path, public: &Path, password: Option<String>) -> Result<KeyId, Error> {
    let key_error = |path: &Path, e: minisign::PError| Error::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let pair = match password {
        Some(password) => KeyPair::generate_encrypted_keypair(Some(password)),
        None => KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| key_error(secret, e))?;
    let id = KeyId::of(pair.pk.keynum());
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| key_error(public, e))?
        .into_string();
    let secret_text = pair
        .sk
        .to_box(None)
        .map_err(|e| key_error(secret, e))?
        .into_string();

    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .map_err(Error::io(secret))?;
    file.write_all(secret_text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(Error::io(secret))?;
    fs::write(public, public_text).map_err(Error::io(public))?;
    Ok(id)
}

/// Reads a public key file (the `minisign -G` format), or a bare base64 key.
pub fn read_public_key(path: &Path) -> Result<PublicKey, Error> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    let text = text.trim();
    let parsed = if text.starts_with("untrusted comment:") {
        PublicKeyBox::from_string(text).and_then(|b| b.into_public_key())
    } else {
        PublicKey::from_base64(text)
    };
    parsed.map_err(|e| Error::Key {
        path: path.to_path_buf(),
        reason: format!("not a minisign public key: {e}"),
    })
}

/// Reads a secret key; an encrypted one needs its password.
pub fn read_secret_key(path: &Path, password: Option<String>) -> Result<SecretKey, Error> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    let boxed = SecretKeyBox::from_string(&text).map_err(|e| Error::Key {
        path: path.to_path_buf(),
        reason: format!("not a minisign secret key: {e}"),
    })?;
    let key = match password {
        Some(password) => boxed.into_secret_key(Some(password)),
        None => boxed.into_unencrypted_secret_key(),
    };
    key.map_err(|e| Error::Key {
        path: path.to_path_buf(),
        reason: format!("{e} (an encrypted key needs --password-env VAR)"),
    })
}

/// Signs an image, writing `IMAGE.minisig`; the trusted comment records the
/// file name and its sha256, so the signature also vouches for them.
pub fn sign(image: &Path, secret: &SecretKey) -> Result<PathBuf, Error> {
    let digest = sha256_file(image)?;
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trusted = format!("file:{name}\tsha256:{digest}");
    let file = File::open(image).map_err(Error::io(image))?;
    let signature = minisign::sign(
        None,
        secret,
        file,
        Some(&trusted),
        Some("signature from tandem image sign"),
    )
    .map_err(|e| Error::Signature {
        image: image.to_path_buf(),
        reason: e.to_string(),
    })?;
    let path = signature_path(image);
    fs::write(&path, signature.into_string()).map_err(Error::io(&path))?;
    Ok(path)
}

/// The sha256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file = File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What a node accepts.
#[derive(Default)]
pub struct TrustPolicy {
    /// Images must be signed by one of these keys.
    pub trusted_keys: Vec<PublicKey>,
    /// Accept an image with no `.minisig` at all (status then warns). A
    /// present but bad signature is refused regardless.
    pub allow_unsigned: bool,
    /// Bounds on the archive.
    pub limits: Limits,
}

/// An image whose signature and contents passed every check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifiedImage {
    /// The image file.
    pub path: PathBuf,
    /// The archive's manifest and sizes.
    #[serde(flatten)]
    pub contents: ImageContents,
    /// The sha256 of the image file.
    pub sha256: String,
    /// Who signed it; `None` only when unsigned images are allowed.
    pub signer: Option<KeyId>,
    /// The image file's size in bytes.
    pub size: u64,
}

impl TrustPolicy {
    /// Checks the signature (`IMAGE.minisig`) and then the archive itself.
    pub fn verify(&self, image: &Path) -> Result<VerifiedImage, Error> {
        let refuse = |reason: String| Error::Signature {
            image: image.to_path_buf(),
            reason,
        };
        let sig_path = signature_path(image);
        let signer = match fs::read_to_string(&sig_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.allow_unsigned {
                    return Err(refuse(format!(
                        "no signature ({} is missing); sign it with `tandem image sign` or set allow_unsigned = true on the node",
                        sig_path.display()
                    )));
                }
                tracing::warn!(image = %image.display(), "accepting an unsigned image (allow_unsigned = true)");
                None
            }
            Err(e) => return Err(Error::io(&sig_path)(e)),
            Ok(text) => Some(self.check_signature(image, &text).map_err(refuse)?),
        };
        let contents = archive::inspect(image, self.limits)?;
        let size = fs::metadata(image).map_err(Error::io(image))?.len();
        Ok(VerifiedImage {
            path: image.to_path_buf(),
            contents,
            sha256: sha256_file(image)?,
            signer,
            size,
        })
    }

    fn check_signature(&self, image: &Path, signature_text: &str) -> Result<KeyId, String> {
        let signature = SignatureBox::from_string(signature_text)
            .map_err(|e| format!("malformed signature file: {e}"))?;
        let signer = KeyId::of(signature.keynum());
        let key = self
            .trusted_keys
            .iter()
            .find(|k| KeyId::of(k.keynum()) == signer)
            .ok_or_else(|| {
                format!("signed by key {signer}, which is not in this node's trusted_keys")
            })?;
        let file = File::open(image).map_err(|e| e.to_string())?;
        minisign::verify(key, &signature, file, true, false, false)
            .map_err(|e| format!("the image does not match its signature by key {signer} ({e}): it was altered or corrupted"))?;
        Ok(signer)
    }
}

/// The key id of a public key.
pub fn key_id(key: &PublicKey) -> KeyId {
    KeyId::of(key.keynum())
}
