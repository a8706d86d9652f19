//! `tandem image`: make signing keys, build, sign and verify release images.
//! Installing and booting them is the agent's job (its A/B slots).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tandem_agent::api::{
    ApiClient, BootAnswer, BootHealth, BootRequest, ImageList, InstallAnswer, InstallRequest,
    PartialUpload, RollbackAnswer, StoredImage, UploadAnswer,
};
use tandem_image::archive::{self, Compression};
use tandem_image::signing::{self, TrustPolicy};
use tandem_image::slots::SlotName;

use crate::cli::{ApiTarget, ImageCommand};
use crate::commands::cluster::{api_client, clients, word};
use crate::commands::refusal;

/// Runs one `tandem image` subcommand.
pub fn run(command: ImageCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Keygen {
            secret,
            public,
            password_env,
        } => {
            let id = signing::keygen(&secret, &public, password(password_env.as_deref())?)?;
            if json {
                let made = KeyPair {
                    key_id: id.to_string(),
                    secret: &secret,
                    public: &public,
                };
                println!("{}", serde_json::to_string(&made)?);
            } else {
                println!(
                    "key {id}: secret key {} (mode 0600), public key {}",
                    secret.display(),
                    public.display()
                );
            }
        }
        ImageCommand::Build {
            manifest,
            files,
            output,
            gzip,
        } => {
            let compression = if gzip {
                Compression::Gzip
            } else {
                Compression::Zstd
            };
            let manifest = archive::build(&manifest, &files, &output, compression)?;
            let sha256 = signing::sha256_file(&output)?;
            if json {
                let built = BuiltImage {
                    image: &output,
                    name: &manifest.name,
                    version: manifest.version,
                    sha256: &sha256,
                };
                println!("{}", serde_json::to_string(&built)?);
            } else {
                println!(
                    "built {} {} into {} (sha256 {sha256})",
                    manifest.name,
                    manifest.version,
                    output.display()
                );
            }
        }
        ImageCommand::Sign {
            secret,
            password_env,
            image,
        } => {
            let key = signing::read_secret_key(&secret, password(password_env.as_deref())?)?;
            let signature = signing::sign(&image, &key)?;
            if json {
                let signed = SignedImage {
                    image: &image,
                    signature: &signature,
                };
                println!("{}", serde_json::to_string(&signed)?);
            } else {
                println!("signed {} → {}", image.display(), signature.display());
            }
        }
        ImageCommand::Verify { public, image } => return verify(&public, &image, json),
        ImageCommand::Push { .. }
        | ImageCommand::List { .. }
        | ImageCommand::Install { .. }
        | ImageCommand::Boot { .. }
        | ImageCommand::Rollback { .. } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            return runtime.block_on(on_agents(command, json));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `image keygen --json`.
#[derive(Serialize)]
struct KeyPair<'a> {
    /// The key id, as minisign prints it.
    key_id: String,
    /// The secret key file.
    secret: &'a Path,
    /// The public key file.
    public: &'a Path,
}

/// `image build --json`.
#[derive(Serialize)]
struct BuiltImage<'a> {
    /// The image file.
    image: &'a Path,
    /// The service it is a release of.
    name: &'a str,
    /// The release.
    version: tandem_version::Version,
    /// The image file's sha256.
    sha256: &'a str,
}

/// `image sign --json`.
#[derive(Serialize)]
struct SignedImage<'a> {
    /// The image file.
    image: &'a Path,
    /// The signature file written beside it.
    signature: &'a Path,
}

/// Chunks of an image upload: small enough that neither end holds an image
/// in memory, large enough that the round trips do not matter.
const UPLOAD_CHUNK: u64 = 4 << 20;

/// How long one chunk (or a signature) may take to arrive: a slow link,
/// not a dead agent.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Sends an image to one agent in chunks, resuming where an earlier,
/// cut transfer of the same name stopped (the final sha256 check catches a
/// partial file of some other content; the agent then drops it). Returns
/// what the agent stored and the offset resumed at.
async fn upload(
    client: &ApiClient,
    image: &Path,
    name: &str,
    sha256: &str,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(StoredImage, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(image).with_context(|| format!("cannot read {}", image.display()))?;
    let size = file.metadata()?.len();
    // An agent without chunked uploads answers 404 here: start at 0.
    let have = client
        .get::<PartialUpload>(&format!("/v1/images/{name}/upload"))
        .await
        .ok()
        .map(|partial| partial.have)
        .filter(|have| *have <= size)
        .unwrap_or(0);
    let mut offset = have;
    file.seek(SeekFrom::Start(offset))?;
    bar.set_position(offset);
    loop {
        let mut chunk = vec![0u8; UPLOAD_CHUNK.min(size - offset) as usize];
        file.read_exact(&mut chunk)
            .with_context(|| format!("cannot read {}", image.display()))?;
        let sent = chunk.len() as u64;
        let done = offset + sent == size;
        let path = format!(
            "/v1/images/{name}?offset={offset}{}",
            if done { "&done=true" } else { "" }
        );
        let answer: UploadAnswer = client
            .put_bytes(&path, chunk, done.then_some(sha256))
            .await?;
        offset += sent;
        bar.set_position(offset);
        match answer {
            UploadAnswer::Stored(stored) => return Ok((stored, have)),
            UploadAnswer::Received(received) if done => bail!(
                "{}: the agent has {} bytes of {name} but did not store it",
                client.addr(),
                received.have
            ),
            UploadAnswer::Received(_) => {}
        }
    }
}

/// One node's part of `image push --json`.
#[derive(Serialize)]
struct Pushed {
    /// The node.
    node: String,
    /// What it stored.
    stored: StoredImage,
}

/// The subcommands that talk to agents.
async fn on_agents(command: ImageCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Push { image, nodes } => {
            let sha256 = signing::sha256_file(&image)?;
            let name = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("the image path has no file name")?;
            let size = std::fs::metadata(&image)
                .with_context(|| format!("cannot read {}", image.display()))?
                .len();
            let signature_path = signing::signature_path(&image);
            let signature = std::fs::read(&signature_path).ok();
            let mut answers = Vec::new();
            for (node, client) in clients(&nodes.target, nodes.all).await? {
                let client = client.with_timeout(UPLOAD_TIMEOUT);
                let bar = crate::commands::bytes_bar(size, json);
                bar.set_message(node.clone());
                let (stored, resumed) = upload(&client, &image, &name, &sha256, &bar).await?;
                bar.finish_and_clear();
                if resumed > 0 && !json {
                    println!("{node}: resumed a cut upload at byte {resumed}");
                }
                if let Some(sig) = &signature {
                    let sig_name = format!("{name}.minisig");
                    let _: UploadAnswer = client
                        .put_bytes(&format!("/v1/images/{sig_name}"), sig.clone(), None)
                        .await?;
                }
                if !json {
                    println!(
                        "{node}: stored {name} ({size} bytes, sha256 {sha256}){}",
                        if signature.is_some() {
                            " with its signature"
                        } else {
                            ", unsigned"
                        }
                    );
                }
                answers.push(Pushed { node, stored });
            }
            if json {
                println!("{}", serde_json::to_string(&answers)?);
            }
        }
        ImageCommand::List { target } => {
            let listing: ImageList = api_client(&target)?.get("/v1/images").await?;
            if json {
                println!("{}", serde_json::to_string(&listing)?);
            } else {
                print!("{}", listing_table(&listing));
            }
        }
        ImageCommand::Install { image, nodes } => {
            let request = InstallRequest {
                image: Some(image.clone()),
                version: None,
            };
            for (node, client) in clients(&nodes.target, nodes.all).await? {
                let answer: InstallAnswer =
                    match refusal(client.post("/v1/images/install", &request).await)? {
                        Ok(answer) => answer,
                        Err(error) => {
                            eprintln!("tandem: {node}: install refused: {error}");
                            return Ok(ExitCode::from(1));
                        }
                    };
                if json {
                    println!("{}", serde_json::to_string(&answer)?);
                } else {
                    // The version and slot in JSON quotes, as this line has
                    // always printed them.
                    println!(
                        "{node}: {} {} installed into slot {}",
                        image,
                        serde_json::to_string(&answer.version)?,
                        serde_json::to_string(&answer.slot)?
                    );
                }
            }
        }
        ImageCommand::Boot { target } => {
            let (node, client) = one_node(&target).await?;
            let booted = client
                .post::<_, BootAnswer>("/v1/images/boot", &BootRequest::default())
                .await;
            return match refusal(booted)? {
                Ok(answer) => {
                    let health = Some(answer.health);
                    print_slot(&node, &answer, answer.booted, &answer.version, health, json)
                }
                Err(error) => Ok(refused(&node, &error)),
            };
        }
        ImageCommand::Rollback { target } => {
            let (node, client) = one_node(&target).await?;
            // The rollback takes no body.
            let rolled_back = client
                .post::<_, RollbackAnswer>("/v1/images/rollback", &())
                .await;
            return match refusal(rolled_back)? {
                Ok(answer) => {
                    print_slot(&node, &answer, answer.running, &answer.version, None, json)
                }
                Err(error) => Ok(refused(&node, &error)),
            };
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The one node a slot command is for (this one, or `--node`).
async fn one_node(target: &ApiTarget) -> anyhow::Result<(String, ApiClient)> {
    clients(target, false)
        .await?
        .into_iter()
        .next()
        .context("no node to ask")
}

fn refused(node: &str, error: &str) -> ExitCode {
    eprintln!("tandem: {node}: refused: {error}");
    ExitCode::from(1)
}

/// The slot a boot or rollback left the node on: the whole answer with
/// `--json`, else one line.
fn print_slot(
    node: &str,
    answer: &impl Serialize,
    slot: SlotName,
    version: &str,
    health: Option<BootHealth>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(answer)?);
    } else {
        let health = health.map(|h| format!(", health {h}")).unwrap_or_default();
        println!("{node}: slot {slot} ({version}){health}");
    }
    Ok(ExitCode::SUCCESS)
}

fn listing_table(listing: &ImageList) -> String {
    let mut out = String::from("SLOT  STATE    VERSION\n");
    for slot in [SlotName::A, SlotName::B] {
        let info = listing.slots.slot(slot);
        let current = if listing.slots.current == Some(slot) {
            " (running)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{slot}     {:<8} {}{current}\n",
            word(&info.state),
            info.version.map_or_else(|| "-".into(), |v| v.to_string())
        ));
    }
    out.push_str("\nIMAGE  VERSION  VERIFIED  SIGNER  SLOT\n");
    let or_dash = |text: Option<String>| text.unwrap_or_else(|| "-".into());
    for image in &listing.images {
        out.push_str(&format!(
            "{}  {}  {}  {}  {}\n",
            image.image,
            or_dash(image.version.map(|v| v.to_string())),
            if image.verified { "yes" } else { "NO" },
            or_dash(image.signer.clone()),
            or_dash(image.slot.map(|s| s.to_string())),
        ));
        if let Some(error) = &image.error {
            out.push_str(&format!("  ! {error}\n"));
        }
    }
    out
}

fn verify(public: &Path, image: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let policy = TrustPolicy {
        trusted_keys: vec![signing::read_public_key(public)?],
        ..TrustPolicy::default()
    };
    match policy.verify(image) {
        Ok(verified) => {
            if json {
                println!("{}", serde_json::to_string(&verified)?);
            } else {
                let m = &verified.contents.manifest;
                println!(
                    "OK {} {}: signed by key {}, {} entries, {} bytes unpacked, data format {}, protocol {:?}",
                    m.name,
                    m.version,
                    verified
                        .signer
                        .map(|k| k.to_string())
                        .unwrap_or_else(|| "nobody".into()),
                    verified.contents.entries,
                    verified.contents.unpacked_bytes,
                    m.data_format,
                    m.protocol,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("tandem: REFUSED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The password held in the named environment variable, if one was named.
fn password(var: Option<&str>) -> anyhow::Result<Option<String>> {
    var.map(|name| {
        std::env::var(name)
            .with_context(|| format!("--password-env {name}: the variable is not set"))
    })
    .transpose()
}
