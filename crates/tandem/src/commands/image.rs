//! `tandem image`: make signing keys, build, sign and verify release images.
//! Installing and booting them is the agent's job (its A/B slots).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tandem_image::archive::{self, Compression};
use tandem_image::signing::{self, TrustPolicy};

use crate::cli::{ApiTarget, ImageCommand};
use crate::commands::cluster::{ApiClient, clients};

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
                println!(
                    "{}",
                    serde_json::json!({"key_id": id.to_string(), "secret": secret, "public": public})
                );
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
                println!(
                    "{}",
                    serde_json::json!({"image": output, "name": manifest.name, "version": manifest.version, "sha256": sha256})
                );
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
                println!(
                    "{}",
                    serde_json::json!({"image": image, "signature": signature})
                );
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

/// Chunks of an image upload: small enough that neither end holds an image
/// in memory, large enough that the round trips do not matter.
const UPLOAD_CHUNK: u64 = 4 << 20;

/// Sends an image to one agent in chunks, resuming where an earlier,
/// cut transfer of the same name stopped (the final sha256 check catches a
/// partial file of some other content; the agent then drops it). Returns
/// the agent's answer and the offset resumed at.
async fn upload(
    client: &ApiClient,
    image: &Path,
    name: &str,
    sha256: &str,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(serde_json::Value, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(image).with_context(|| format!("cannot read {}", image.display()))?;
    let size = file.metadata()?.len();
    // An agent without chunked uploads answers 404 here: start at 0.
    let have = client
        .get(&format!("/v1/images/{name}/upload"))
        .await
        .ok()
        .and_then(|answer| answer["have"].as_u64())
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
        let answer = client.put(&path, chunk, done.then_some(sha256)).await?;
        offset += sent;
        bar.set_position(offset);
        if done {
            return Ok((answer, have));
        }
    }
}

/// The subcommands that talk to agents.
async fn on_agents(command: ImageCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Push { image, all, target } => {
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
            for (node, client) in clients(&target, all).await? {
                let bar = crate::commands::bytes_bar(size, json);
                bar.set_message(node.clone());
                let (stored, resumed) = upload(&client, &image, &name, &sha256, &bar).await?;
                bar.finish_and_clear();
                if resumed > 0 && !json {
                    println!("{node}: resumed a cut upload at byte {resumed}");
                }
                if let Some(sig) = &signature {
                    let sig_name = format!("{name}.minisig");
                    client
                        .put(&format!("/v1/images/{sig_name}"), sig.clone(), None)
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
                answers.push(serde_json::json!({"node": node, "stored": stored}));
            }
            if json {
                println!("{}", serde_json::Value::Array(answers));
            }
        }
        ImageCommand::List { target } => {
            let client = ApiClient::new(&target)?;
            let listing = client.get("/v1/images").await?;
            if json {
                println!("{listing}");
            } else {
                print!("{}", listing_table(&listing));
            }
        }
        ImageCommand::Install { image, all, target } => {
            for (node, client) in clients(&target, all).await? {
                let answer = client
                    .post("/v1/images/install", &serde_json::json!({"image": image}))
                    .await?;
                if let Some(error) = answer["error"].as_str() {
                    eprintln!("tandem: {node}: install refused: {error}");
                    return Ok(ExitCode::from(1));
                }
                if json {
                    println!("{answer}");
                } else {
                    println!(
                        "{node}: {} {} installed into slot {}",
                        image, answer["version"], answer["slot"]
                    );
                }
            }
        }
        ImageCommand::Boot { target } => return slot_call(&target, "/v1/images/boot", json).await,
        ImageCommand::Rollback { target } => {
            return slot_call(&target, "/v1/images/rollback", json).await;
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn slot_call(target: &ApiTarget, path: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (node, client) = clients(target, false).await?.remove(0);
    let answer = client.post(path, &serde_json::json!({})).await?;
    if let Some(error) = answer["error"].as_str() {
        eprintln!("tandem: {node}: refused: {error}");
        return Ok(ExitCode::from(1));
    }
    if json {
        println!("{answer}");
    } else {
        let slot = answer["booted"]
            .as_str()
            .or(answer["running"].as_str())
            .unwrap_or("?");
        let health = answer["health"]
            .as_str()
            .map(|h| format!(", health {h}"))
            .unwrap_or_default();
        println!(
            "{node}: slot {slot} ({}){health}",
            answer["version"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn listing_table(listing: &serde_json::Value) -> String {
    let mut out = String::from("SLOT  STATE    VERSION\n");
    for slot in ["a", "b"] {
        let info = &listing["slots"][slot];
        let current = if listing["slots"]["current"] == slot {
            " (running)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{slot}     {:<8} {}{current}\n",
            info["state"].as_str().unwrap_or("?"),
            info["version"].as_str().unwrap_or("-")
        ));
    }
    out.push_str("\nIMAGE  VERSION  VERIFIED  SIGNER  SLOT\n");
    for image in listing["images"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}  {}  {}  {}  {}\n",
            image["image"].as_str().unwrap_or("?"),
            image["version"].as_str().unwrap_or("-"),
            if image["verified"] == true {
                "yes"
            } else {
                "NO"
            },
            image["signer"].as_str().unwrap_or("-"),
            image["slot"].as_str().unwrap_or("-"),
        ));
        if let Some(error) = image["error"].as_str() {
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
