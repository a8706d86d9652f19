//! The README's first command, end to end: `tandem demo` upgrades a live
//! pair under mail load and nothing acknowledged may be lost.

use std::process::Command;

#[test]
fn the_demo_upgrades_under_load_and_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--json", "demo", "--messages", "3000"])
        .env_remove("TANDEM_CONFIG")
        .output()
        .expect("run tandem demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("parse the report as JSON: {e:#}\n{stdout}"));
    for key in [
        "strategy",
        "from",
        "to",
        "sent",
        "acknowledged",
        "delivered",
        "lost",
        "duplicates",
        "failed_sessions",
        "max_gap_ms",
        "failovers",
        "versions_after",
        "duration_s",
    ] {
        assert!(report.get(key).is_some(), "{key} missing: {report}");
    }
    assert!(
        report["acknowledged"].as_u64().unwrap_or(0) > 0,
        "mail flowed: {report}"
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["delivered"], report["acknowledged"], "{report}");
    assert_eq!(
        report["failed_sessions"], 0,
        "a switchover fails no client session: {report}"
    );
    assert!(
        report["failovers"].as_u64().unwrap_or(0) >= 1,
        "the switchover moved the VIP: {report}"
    );
    assert_eq!(
        report["versions_after"],
        serde_json::json!({"alpha": "6.2.5", "beta": "6.2.5"})
    );
}

#[test]
fn the_demo_runs_five_nodes_under_etcd_and_loses_nothing() {
    if tandem::localetcd::LocalEtcd::binary().is_none() {
        eprintln!("demo under etcd: skipped: no `etcd` on PATH (Debian package etcd-server)");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "--json",
            "demo",
            "--nodes",
            "5",
            "--coordination",
            "etcd",
            "--messages",
            "1000",
        ])
        .env_remove("TANDEM_CONFIG")
        .output()
        .expect("run tandem demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("parse the report as JSON: {e:#}\n{stdout}"));
    assert_eq!(report["coordination"], "etcd", "{report}");
    assert!(
        report["acknowledged"].as_u64().unwrap_or(0) > 0,
        "mail flowed: {report}"
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["delivered"], report["acknowledged"], "{report}");
    assert_eq!(
        report["versions_after"].as_object().map(|v| v.len()),
        Some(5),
        "{report}"
    );
    assert!(
        report["versions_after"]
            .as_object()
            .is_some_and(|v| v.values().all(|v| v == "6.2.5")),
        "{report}"
    );
}
