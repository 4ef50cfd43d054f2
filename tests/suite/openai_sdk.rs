//! End to end with the real OpenAI Python SDK (PyPI `openai`) as a client of the proxy:
//! tests/python/openai_sdk_e2e.py against a proxy in front of the mock provider, with Pay-i's
//! own `payi` package parsing every `xproxy_result`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use llm_meter::MemoryLedger;
use llm_meter::Meter;
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};

const INSTALL: &str = "the OpenAI Python SDK and Pay-i's `payi` package are needed: run scripts/test.sh \
     (it makes .venv with `pip install openai payi`), or set LLM_METER_PYTHON to a python that has both";

fn python() -> PathBuf {
    let python = std::env::var_os("LLM_METER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let check = Command::new(&python).args(["-c", "import openai, payi"]).output();
    match check {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import openai and payi ({}): {INSTALL}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("no python at {} ({e}): {INSTALL}", python.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_through_the_proxy() {
    let python = python();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let meter = Meter::builder()
        .ledger(Arc::new(MemoryLedger::new(vec![]).unwrap()))
        .build()
        .unwrap();
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk_e2e.py");
    let checks = std::fs::read_to_string(&script)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("def test_"))
        .count();
    assert!(checks >= 14, "the script lost checks: {checks}");
    let mock_url = mock.base_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}"))
            .arg(mock_url)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "the Python SDK checks failed:\n{report}");
    // Every check ran and passed: a script that ran none (or fewer) fails here.
    let closing = format!("\n{checks} passed, 0 failed\n");
    assert!(report.contains(&closing), "expected {closing:?}:\n{report}");
}
