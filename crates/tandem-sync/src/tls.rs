//! The authenticated sync connection: mutual TLS with the cluster CA as the
//! only trust anchor, and the peer's node name checked on both ends.
//!
//! - The dialer (the active) checks the server's certificate like a host
//!   name: it must be signed by the cluster CA and carry the node name we
//!   dialed. rustls does both.
//! - The acceptor requires a client certificate signed by the cluster CA
//!   (rustls), then checks that it names one of the peers it expects (here,
//!   after the handshake, because rustls has no notion of "expected client
//!   name"). It answers [`Message::Welcome`] or [`Message::Refused`], so a
//!   refused dialer gets a reason rather than a reset. The receiver may
//!   refuse an authenticated peer too, for reasons of its own (it serves,
//!   or cannot put files aside): [`accept_unanswered`] leaves it the
//!   answer.
//! - Plaintext is refused before TLS even starts: a TLS connection opens
//!   with a handshake record (byte 0x16); anything else gets one line of
//!   explanation and a close.
//!
//! The ring provider is passed explicitly to every builder, so no process-
//! wide default needs installing and a feature that drags aws-lc-rs in
//! cannot change which crypto runs here (notes/rust-dependencies.md,
//! pitfalls 2–4).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::cert::{CA_CERT, read_required};
use crate::frame::{Message, read_frame, write_frame};
use crate::{Error, Result};

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plaintext client is told before the close; readable with `nc`.
const PLAINTEXT_REFUSAL: &[u8] =
    b"tandem sync: this port accepts only mutually-authenticated TLS\r\n";

/// A node's TLS identity: its certificate and key, the cluster CA, and the
/// two rustls configurations made from them. Cheap to clone.
#[derive(Clone)]
pub struct TlsIdentity {
    /// This node's name, as its certificate says.
    node: String,
    /// Used when accepting: requires a client certificate from the CA.
    server: Arc<ServerConfig>,
    /// Used when dialing: trusts only the CA, presents our certificate.
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads `NODE.pem`, `NODE.key` and `ca.pem` from `dir` (what
    /// [`crate::cert::issue`] writes).
    pub fn load(dir: &Path, node: &str) -> Result<Self> {
        let hint = format!(
            "run `tandem cert issue --ca CA_DIR --node {node} -o {}` (after `tandem cert init CA_DIR`)",
            dir.display()
        );
        let cert = read_required(&dir.join(format!("{node}.pem")), &hint)?;
        let key = read_required(&dir.join(format!("{node}.key")), &hint)?;
        let ca = read_required(&dir.join(CA_CERT), &hint)?;
        Self::from_pem(node, &cert, &key, &ca).map_err(|e| match e {
            Error::BadFile { path, message } => Error::BadFile {
                path: dir.join(path),
                message,
            },
            other => other,
        })
    }

    /// Builds the identity from PEM text (certificate, key, CA).
    pub fn from_pem(node: &str, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self> {
        let bad = |file: &str, message: String| Error::BadFile {
            path: file.into(),
            message,
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    bad(
                        &format!("{node}.pem"),
                        format!("not a PEM certificate: {e}"),
                    )
                })?;
        if chain.is_empty() {
            return Err(bad(&format!("{node}.pem"), "holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            bad(
                &format!("{node}.key"),
                format!("not a PEM private key: {e}"),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| bad(CA_CERT, format!("not a PEM certificate: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| bad(CA_CERT, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(CA_CERT, "holds no certificate".into()));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config_err = |e: rustls::Error| Error::TlsConfig(e.to_string());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| Error::TlsConfig(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                bad(
                    &format!("{node}.key"),
                    format!("does not match the certificate: {e}"),
                )
            })?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                bad(
                    &format!("{node}.key"),
                    format!("does not match the certificate: {e}"),
                )
            })?;
        Ok(TlsIdentity {
            node: node.to_string(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// An authenticated sync connection, either end.
pub struct Channel {
    /// The peer's node name, checked against its certificate.
    pub peer: String,
    /// The encrypted stream, buffered: write frames, then flush once.
    pub stream: BufStream<TlsStream<TcpStream>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("peer", &self.peer).finish()
    }
}

/// Dials `peer` (a node name) at `addr`, within `timeout` for the TCP
/// connect, the TLS handshake and the peer's welcome together.
pub async fn connect(
    identity: &TlsIdentity,
    addr: SocketAddr,
    peer: &str,
    timeout: Duration,
) -> Result<Channel> {
    let label = format!("{peer} ({addr})");
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Network {
                peer: label.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(peer.to_string()).map_err(|_| {
            Error::Cert(format!(
                "peer name {peer:?} is not a valid certificate name"
            ))
        })?;
        let tls = TlsConnector::from(identity.client.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| classify(&label, peer, e))?;
        let mut stream = BufStream::new(TlsStream::from(tls));
        // With TLS 1.3 the server judges our certificate after our side of
        // the handshake is done, so a refusal arrives here, as an alert.
        match read_frame(&mut stream).await {
            Ok(Some(frame)) => match frame.message {
                Message::Welcome { .. } => Ok(Channel {
                    peer: peer.to_string(),
                    stream,
                }),
                Message::Refused { reason } => Err(Error::Refused {
                    peer: label.clone(),
                    reason,
                }),
                other => Err(Error::Protocol {
                    peer: label.clone(),
                    reason: format!("expected a welcome, got {other:?}"),
                }),
            },
            Ok(None) => Err(Error::Refused {
                peer: label.clone(),
                reason: "closed the connection without a word".into(),
            }),
            Err(e) => Err(classify(&label, peer, e)),
        }
    };
    within(timeout, &label, attempt).await
}

/// Accepts a connection: refuses plaintext, completes mutual TLS, and
/// checks that the client's certificate names one of `expected_peers`.
pub async fn accept(
    identity: &TlsIdentity,
    tcp: TcpStream,
    expected_peers: &[String],
    timeout: Duration,
) -> Result<Channel> {
    accept_unanswered(identity, tcp, expected_peers, timeout)
        .await?
        .welcome()
        .await
}

/// An authenticated dialer not answered yet: the acceptor decides whether
/// to [`welcome`](Admission::welcome) or [`refuse`](Admission::refuse) it
/// on grounds TLS knows nothing about (this node serves, files to put
/// aside first), and the dialer gets the reason.
pub struct Admission {
    peer: String,
    node: String,
    label: String,
    stream: BufStream<TlsStream<TcpStream>>,
    timeout: Duration,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("peer", &self.peer)
            .field("from", &self.label)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The dialer's node name, checked against its certificate.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Answers [`Message::Welcome`]: the connection is open for requests.
    pub async fn welcome(mut self) -> Result<Channel> {
        let welcome = Message::Welcome {
            node: self.node.clone(),
        };
        self.answer(&welcome).await?;
        Ok(Channel {
            peer: self.peer,
            stream: self.stream,
        })
    }

    /// Answers [`Message::Refused`] with `reason`, and closes.
    pub async fn refuse(mut self, reason: &str) -> Result<()> {
        let refused = Message::Refused {
            reason: reason.to_string(),
        };
        self.answer(&refused).await?;
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
        Ok(())
    }

    async fn answer(&mut self, message: &Message) -> Result<()> {
        let sent = async {
            write_frame(&mut self.stream, message, b"").await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(result) => result.map_err(|source| Error::Network {
                peer: self.label.clone(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                peer: self.label.clone(),
                timeout: self.timeout,
            }),
        }
    }
}

/// [`accept`] up to the answer: refuses plaintext, completes mutual TLS,
/// and checks that the client's certificate names one of
/// `expected_peers` (refusing it with the reason if not). The caller then
/// welcomes or refuses the peer; each step has `timeout`.
pub async fn accept_unanswered(
    identity: &TlsIdentity,
    tcp: TcpStream,
    expected_peers: &[String],
    timeout: Duration,
) -> Result<Admission> {
    let label = tcp
        .peer_addr()
        .map_or_else(|_| "unknown address".to_string(), |a| a.to_string());
    let attempt = async {
        let _ = tcp.set_nodelay(true);
        let mut first = [0u8; 1];
        let seen = tcp
            .peek(&mut first)
            .await
            .map_err(|source| Error::Network {
                peer: label.clone(),
                source,
            })?;
        if seen == 0 {
            return Err(Error::Network {
                peer: label.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            let mut tcp = tcp;
            let _ = tcp.write_all(PLAINTEXT_REFUSAL).await;
            let _ = tcp.shutdown().await;
            return Err(Error::Plaintext {
                peer: label.clone(),
            });
        }
        let tls = TlsAcceptor::from(identity.server.clone())
            .accept(tcp)
            .await
            .map_err(|e| classify(&label, "", e))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| Error::Handshake {
                peer: label.clone(),
                reason: "no client certificate".into(),
            })
            .and_then(|leaf| certificate_names(&label, leaf, expected_peers));
        let stream = BufStream::new(TlsStream::from(tls));
        let admission = |peer| Admission {
            peer,
            node: identity.node.clone(),
            label: label.clone(),
            stream,
            timeout,
        };
        match peer {
            Ok(peer) => Ok(admission(peer)),
            Err(e) => {
                let reason = format!("{} does not accept this certificate: {e}", identity.node);
                let _ = admission(String::new()).refuse(&reason).await;
                Err(e)
            }
        }
    };
    within(timeout, &label, attempt).await
}

/// The expected peer a client certificate belongs to, or why none.
fn certificate_names(
    label: &str,
    leaf: &CertificateDer<'_>,
    expected_peers: &[String],
) -> Result<String> {
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| Error::Handshake {
        peer: label.to_string(),
        reason: format!("unparsable client certificate: {e}"),
    })?;
    let mut presented = Vec::new();
    for expected in expected_peers {
        let Ok(name) = ServerName::try_from(expected.clone()) else {
            continue;
        };
        match rustls::client::verify_server_name(&parsed, &name) {
            Ok(()) => return Ok(expected.clone()),
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented: names,
                ..
            })) => presented = names,
            Err(_) => {}
        }
    }
    Err(Error::WrongPeer {
        peer: label.to_string(),
        presented: if presented.is_empty() {
            "an unknown node".into()
        } else {
            display_names(&presented)
        },
        expected: if expected_peers.is_empty() {
            "no peer at all".into()
        } else {
            expected_peers.join(" or ")
        },
    })
}

/// Turns what tokio-rustls reports into an error that says what happened.
fn classify(label: &str, expected: &str, error: std::io::Error) -> Error {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        })) => Error::WrongPeer {
            peer: label.to_string(),
            presented: display_names(&presented),
            expected: expected.to_string(),
        },
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
            Error::WrongPeer {
                peer: label.to_string(),
                presented: "another name".into(),
                expected: expected.to_string(),
            }
        }
        Some(rustls::Error::InvalidMessage(_)) => Error::Plaintext {
            peer: label.to_string(),
        },
        Some(rustls::Error::AlertReceived(alert)) => Error::Handshake {
            peer: label.to_string(),
            reason: format!("the peer refused our certificate (TLS alert {alert:?})"),
        },
        Some(other) => Error::Handshake {
            peer: label.to_string(),
            reason: other.to_string(),
        },
        None => Error::Network {
            peer: label.to_string(),
            source: error,
        },
    }
}

/// rustls lists presented names as `DnsName("node-c")`; show `node-c`.
fn display_names(presented: &[String]) -> String {
    presented
        .iter()
        .map(|name| {
            name.strip_prefix("DnsName(\"")
                .and_then(|rest| rest.strip_suffix("\")"))
                .unwrap_or(name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `attempt`, or [`Error::Timeout`] naming `label` once `timeout` passes: a
/// handshake with a peer that stopped answering must not hang its caller.
async fn within<T>(
    timeout: std::time::Duration,
    label: &str,
    attempt: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Error::Timeout {
            peer: label.to_string(),
            timeout,
        })?
}
