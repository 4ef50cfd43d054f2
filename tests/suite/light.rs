//! The library stays light: with default features a library user's dependency tree has none of
//! the proxy's, the CLI's or the exporters' heavy crates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::BTreeSet;
use std::process::Command;

/// Crate names in `cargo tree -p llm-meter -e normal` with `features`.
fn normal_dependencies(features: &[&str]) -> BTreeSet<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "tree",
        "--locked",
        "-p",
        "llm-meter",
        "-e",
        "normal",
        "--prefix",
        "none",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !features.is_empty() {
        cmd.args(["--no-default-features", "--features", &features.join(",")]);
    }
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn default_features_build_no_server_cli_grpc_openssl_or_log_formatting() {
    let deps = normal_dependencies(&[]);
    for heavy in [
        "axum",
        "clap",
        "tonic",
        "openssl",
        "openssl-sys",
        "native-tls",
        "prost",
        "llm-meter-proxy",
        "llm-meter-mock",
        "llm-meter-cli",
        "nu-ansi-term",
        "prometheus",
        "redis",
    ] {
        assert!(!deps.contains(heavy), "{heavy} is in the default dependency tree");
    }
    for needed in [
        "reqwest",
        "rustls",
        "opentelemetry",
        "opentelemetry_sdk",
        "tracing-opentelemetry",
    ] {
        assert!(deps.contains(needed), "{needed} missing: {deps:?}");
    }
    println!("{} crates with default features", deps.len());
}

#[test]
fn each_integration_brings_its_own_dependencies() {
    assert!(normal_dependencies(&["rustls", "prometheus"]).contains("axum"));
    let http = normal_dependencies(&["rustls", "otlp-http"]);
    assert!(
        http.contains("opentelemetry-otlp") && !http.contains("tonic"),
        "HTTP-only OTLP builds no tonic"
    );
    assert!(normal_dependencies(&["rustls", "otlp-grpc"]).contains("tonic"));
    assert!(normal_dependencies(&["native-tls"]).contains("native-tls"));
    assert!(normal_dependencies(&["rustls", "redis"]).contains("redis"));
}
