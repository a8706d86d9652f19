//! `tandem path`: the supported upgrade path between two releases of a
//! catalog, one line per hop with the rule that allows it.

use std::process::ExitCode;

use serde::Serialize;
use tandem_version::{Catalog, UpgradePath, Version};

use crate::cli::PathArgs;

/// Exit code when the catalog cannot be read or parsed: bad input, like a
/// bad flag.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit code when the catalog has no supported path: a "no" answer.
const EXIT_NO_PATH: u8 = 1;

/// Loads the catalog, plans, and prints the path.
pub fn run(args: &PathArgs, json: bool) -> anyhow::Result<ExitCode> {
    let origin = args.catalog.display().to_string();
    let catalog = match std::fs::read_to_string(&args.catalog) {
        Err(e) => {
            eprintln!("tandem: cannot read catalog {origin}: {e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
        Ok(text) => match Catalog::parse(&text, &origin) {
            Ok(catalog) => catalog,
            Err(e) => {
                eprintln!("tandem: invalid catalog: {e}");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
        },
    };
    let path = match catalog.plan(&args.from, &args.to) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("tandem: {e}");
            return Ok(ExitCode::from(EXIT_NO_PATH));
        }
    };
    tracing::info!(catalog = %origin, from = %path.from, to = %path.to, hops = path.hops.len(), "planned upgrade path");
    if json {
        println!("{}", as_json(&path));
    } else {
        print!("{}", as_text(&path, &catalog));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--json` document: `hops` lists every version installed, in order,
/// ending with the target; it is empty when `from == to`.
#[derive(Serialize)]
struct PathJson {
    from: Version,
    to: Version,
    hops: Vec<Version>,
}

fn as_json(path: &UpgradePath) -> String {
    let doc = PathJson {
        from: path.from,
        to: path.to,
        hops: path.hops.iter().map(|h| h.to).collect(),
    };
    // Serializing strings and a list of strings cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

fn as_text(path: &UpgradePath, catalog: &Catalog) -> String {
    if path.hops.is_empty() {
        return format!("{} is already the target: nothing to install\n", path.to);
    }
    let width = path
        .hops
        .iter()
        .map(|h| format!("{} → {}", h.from, h.to).chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for hop in &path.hops {
        let step = format!("{} → {}", hop.from, hop.to);
        let pad = width - step.chars().count();
        let released = catalog
            .release(&hop.to)
            .and_then(|r| r.released)
            .map(|d| format!("  (released {d})"))
            .unwrap_or_default();
        out.push_str(&format!("{step}{:pad$}  {}{released}\n", "", hop.rule));
    }
    let count = path.hops.len();
    out.push_str(&format!(
        "{count} hop{} from {} to {} under the {} rules\n",
        if count == 1 { "" } else { "s" },
        path.from,
        path.to,
        catalog.rules()
    ));
    out
}
