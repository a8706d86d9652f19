//! The `tandem` binary as an operator runs it: exit codes, stdout, stderr.

use assert_cmd::Command;

const FORTIMAIL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../catalogs/fortimail-example.toml"
);
const ASA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../catalogs/asa-example.toml"
);

/// Runs `tandem ARGS` and returns (exit code, stdout, stderr).
fn tandem(args: &[&str]) -> (i32, String, String) {
    let output = Command::cargo_bin("tandem")
        .expect("find the tandem binary")
        .args(args)
        .output()
        .expect("run tandem");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("parse the output as JSON: {e:#}\n{stdout}"))
}

#[test]
fn path_json_lists_every_installed_version() {
    let (code, out, _) = tandem(&[
        "path",
        "--catalog",
        ASA,
        "--from",
        "7.0(1)",
        "--to",
        "7.2(1)",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out),
        serde_json::json!({"from": "7.0(1)", "to": "7.2(1)", "hops": ["7.1(2)", "7.2(1)"]})
    );
    assert!(
        out.starts_with(r#"{"from":"7.0(1)","to":"7.2(1)","hops":"#),
        "key order: {out}"
    );
}

#[test]
fn path_answers_the_seed_examples() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (ASA, "7.0(1)", "7.0(4)", &["7.0(4)"]),
        (ASA, "7.0(1)", "7.2(1)", &["7.1(2)", "7.2(1)"]),
        (ASA, "7.2(1)", "8.0(1)", &["8.0(1)"]),
        (FORTIMAIL, "6.2.0", "6.2.5", &["6.2.5"]),
        (FORTIMAIL, "6.0.6", "6.2.5", &["6.0.7", "6.2.0", "6.2.5"]),
        (FORTIMAIL, "6.2.5", "6.2.5", &[]),
    ];
    for (catalog, from, to, hops) in cases {
        let (code, out, err) = tandem(&[
            "--json",
            "path",
            "--catalog",
            catalog,
            "--from",
            from,
            "--to",
            to,
        ]);
        assert_eq!(code, 0, "{from} → {to}: {err}");
        assert_eq!(json(&out)["hops"], serde_json::json!(hops), "{from} → {to}");
    }
}

#[test]
fn path_text_names_the_rule_of_each_hop() {
    let (code, out, _) = tandem(&[
        "path",
        "--catalog",
        ASA,
        "--from",
        "7.0(1)",
        "--to",
        "8.0(1)",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "7.0(1) → 7.1(2)     minor step",
            "7.1(2) → 7.2(2.20)  minor step",
            "7.2(2.20) → 8.0(1)  major step",
            "3 hops from 7.0(1) to 8.0(1) under the minor-step rules",
        ]
    );
}

#[test]
fn path_says_no_with_exit_1_and_the_reason() {
    let (code, out, err) = tandem(&[
        "path",
        "--catalog",
        FORTIMAIL,
        "--from",
        "6.2.5",
        "--to",
        "6.2.0",
    ]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("no downgrade path"), "{err}");

    let (code, _, err) = tandem(&[
        "path",
        "--catalog",
        FORTIMAIL,
        "--from",
        "6.2.3",
        "--to",
        "6.2.5",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "6.2.3 is not a release in the catalog (nearest known releases: 6.2.2 and 6.2.4)"
        ),
        "{err}"
    );

    let (code, _, err) = tandem(&[
        "path",
        "--catalog",
        FORTIMAIL,
        "--from",
        "6.0.6",
        "--to",
        "6.4.0",
        "--json",
    ]);
    assert_eq!(code, 0, "6.0.6 reaches 6.4.0 through 6.2.5: {err}");
    let (code, _, err) = tandem(&[
        "path",
        "--catalog",
        FORTIMAIL,
        "--from",
        "6.2.0",
        "--to",
        "6.4.0",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn path_bad_input_exits_2() {
    let (code, _, err) = tandem(&[
        "path",
        "--catalog",
        ASA,
        "--from",
        "7.x(1)",
        "--to",
        "7.2(1)",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("minor \"x\" is not a number"), "{err}");

    let (code, _, err) = tandem(&[
        "path",
        "--catalog",
        "/nonexistent/catalog.toml",
        "--from",
        "7.0(1)",
        "--to",
        "7.2(1)",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read catalog /nonexistent/catalog.toml"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("create a temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "rules = \"edges\"\n[[release]]\nversion = \"6.2.0\"\n[[edge]]\nfrom = \"6.2.0\"\nto = \"6.9.*\"\n")
        .expect("write bad.toml");
    let (code, _, err) = tandem(&[
        "path",
        "--catalog",
        bad.to_str().unwrap_or_default(),
        "--from",
        "6.2.0",
        "--to",
        "6.2.0",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:6:6: edge[0].to: 6.9.* matches no release"),
        "{err}"
    );

    let (code, _, _) = tandem(&["path", "--from", "7.0(1)"]);
    assert_eq!(code, 2, "missing flags are a usage error");
}

#[test]
fn completions_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = tandem(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(
            out.contains("tandem") && out.contains("catalog"),
            "{shell} completions mention the flags"
        );
    }
    let (code, out, _) = tandem(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, concat!("tandem ", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = tandem(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit status"), "{out}");
}

#[test]
fn json_logs_are_json_lines() {
    // Logs go to stderr, one JSON object per line; stdout stays one JSON
    // document for the command's answer.
    let (code, out, err) = tandem(&[
        "--json",
        "-v",
        "--log-format",
        "json",
        "path",
        "--catalog",
        ASA,
        "--from",
        "7.0(1)",
        "--to",
        "7.0(4)",
    ]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["hops"], serde_json::json!(["7.0(4)"]));
    let records: Vec<serde_json::Value> = err.lines().map(json).collect();
    assert!(
        records
            .iter()
            .any(|r| r["fields"]["message"] == "planned upgrade path" && r["level"] == "INFO"),
        "{err}"
    );
    let (_, _, quiet) = tandem(&[
        "--log-format",
        "json",
        "path",
        "--catalog",
        ASA,
        "--from",
        "7.0(1)",
        "--to",
        "7.0(4)",
    ]);
    assert_eq!(quiet, "", "info is below the default level");
}

#[test]
fn image_keygen_build_sign_verify() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::create_dir_all(dir.path().join("files/bin")).expect("create files/bin");
    std::fs::write(dir.path().join("files/bin/relay"), "#!/bin/sh\n")
        .expect("write files/bin/relay");
    std::fs::write(
        dir.path().join("manifest.toml"),
        "name = \"relay\"\nversion = \"6.2.5\"\nentrypoint = [\"bin/relay\"]\ndata_format = 1\nprotocol = [1]\n",
    )
    .expect("write manifest.toml");

    let (code, _, err) = tandem(&[
        "image",
        "keygen",
        "--secret",
        &p("k.key"),
        "--public",
        &p("k.pub"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(&[
        "image",
        "build",
        "--manifest",
        &p("manifest.toml"),
        "--files",
        &p("files"),
        "-o",
        &p("relay.tandem"),
    ]);
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = tandem(&[
        "image",
        "verify",
        "--public",
        &p("k.pub"),
        &p("relay.tandem"),
    ]);
    assert_eq!(code, 1, "unsigned images are refused");
    assert!(
        err.contains("REFUSED") && err.contains("no signature"),
        "{err}"
    );

    let (code, _, err) = tandem(&["image", "sign", "--secret", &p("k.key"), &p("relay.tandem")]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = tandem(&[
        "--json",
        "image",
        "verify",
        "--public",
        &p("k.pub"),
        &p("relay.tandem"),
    ]);
    assert_eq!(code, 0, "{err}");
    let verified = json(&out);
    assert_eq!(verified["manifest"]["version"], "6.2.5");
    assert_eq!(verified["compression"], "zstd");

    let mut bytes = std::fs::read(p("relay.tandem")).expect("read relay.tandem");
    bytes[20] ^= 1;
    std::fs::write(p("relay.tandem"), bytes).expect("write the corrupted relay.tandem");
    let (code, _, err) = tandem(&[
        "image",
        "verify",
        "--public",
        &p("k.pub"),
        &p("relay.tandem"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("does not match its signature"), "{err}");

    let (code, _, err) = tandem(&[
        "image",
        "sign",
        "--secret",
        &p("k.key"),
        "--password-env",
        "TANDEM_NO_SUCH_VAR",
        &p("relay.tandem"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("TANDEM_NO_SUCH_VAR: the variable is not set"),
        "{err}"
    );
}

#[test]
fn upgrade_simulate_reports_a_fleet_of_a_thousand_relays() {
    let args = [
        "--json",
        "upgrade",
        "simulate",
        "--nodes",
        "1000",
        "--batch",
        "10%",
        "--canary",
        "5",
        "--max-failed",
        "20",
        "--fail-rate",
        "1%",
        "--seed",
        "7",
        "--runs",
        "200",
    ];
    let (code, out, err) = tandem(&args);
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    let figure = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is a number: {report}"))
    };
    assert!(figure("p50_ms") <= figure("p99_ms"), "{report}");
    assert!(figure("p50_ms") > 0.0, "{report}");
    assert!((0.0..=1.0).contains(&figure("stop_chance")), "{report}");
    assert_eq!(report["waves"], 12, "5 canaries, 10 batches, the primary");
    assert_eq!(report["batch"], "10%");
    assert_eq!(report["fail_rate"], 0.01);

    let (code, again, err) = tandem(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, again, "the same seed gives the same figures");

    let (code, text, err) = tandem(&args[1..]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("duration p99") && text.contains("stop chance"),
        "{text}"
    );
}

#[test]
fn upgrade_simulate_refuses_bad_knobs_with_exit_2() {
    for (flag, value, says) in [
        ("--batch", "0%", "from 1% to 100%"),
        ("--batch", "ten", "such as `10%`"),
        ("--fail-rate", "1.5", "from 0 to 1"),
        ("--boot", "soon", "not a duration"),
        ("--nodes", "0", "0"),
    ] {
        let (code, _, err) = tandem(&["upgrade", "simulate", flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
