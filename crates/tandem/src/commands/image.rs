//! `tandem image`: make signing keys, build, sign and verify release images.
//! Installing and booting them is the agent's job (its A/B slots).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tandem_image::archive::{self, Compression};
use tandem_image::signing::{self, TrustPolicy};

use crate::cli::ImageCommand;

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
    }
    Ok(ExitCode::SUCCESS)
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
