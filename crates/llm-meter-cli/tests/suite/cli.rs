//! The `llm-meter` binary: bad flags and bad configuration files fail clearly, with a non-zero
//! exit; `mock` and `proxy` serve; the proxy saves its ledger when interrupted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llm-meter"))
}

#[test]
fn bad_flags_are_refused_with_usage() {
    let out = bin().args(["proxy", "--listen", "not-an-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen") && err.contains("not-an-address"), "{err}");
}

#[test]
fn bad_config_files_name_the_file_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("llm-meter-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, words) in [
        ("typo.toml", "[[limit]]\nid = \"a\"\nmax = 1\n", "unknown field"),
        (
            "kind.toml",
            "[[limits]]\nid = \"a\"\nmax = 1\nkind = \"deny\"\n",
            "unknown variant",
        ),
        ("upstream.toml", "upstream = \"not a url\"\n", "upstream"),
    ] {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = bin()
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name) && err.contains(words), "{name}: {err}");
    }
    let missing = bin()
        .args(["proxy", "--config", "/nonexistent/llm-meter.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/llm-meter.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mock_and_proxy_serve_from_the_command_line() {
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (mock_port, proxy_port, admin_port) = (port(()), port(()), port(()));
    let mut mock = bin()
        .args(["mock", "--listen", &format!("127.0.0.1:{mock_port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proxy = bin()
        .args([
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--upstream", &format!("http://127.0.0.1:{mock_port}/v1")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let client = reqwest::Client::new();
        let body = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
        for _ in 0..100 {
            if let Ok(r) = client
                .post(format!("http://127.0.0.1:{proxy_port}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
            {
                let health = client
                    .get(format!("http://127.0.0.1:{admin_port}/healthz"))
                    .send()
                    .await
                    .map(|h| h.status().as_u16());
                let metrics = client
                    .get(format!("http://127.0.0.1:{admin_port}/metrics"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                return Some((
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                    health.ok(),
                    metrics,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    for child in [&mut proxy, &mut mock] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (status, body, health, metrics) = result.expect("the proxy answered");
    assert_eq!(status, 200);
    assert!(body.get("xproxy_result").is_some());
    assert_eq!(health, Some(200));
    assert!(metrics.contains("gen_ai_client_operation_duration_seconds_count"));
}

#[test]
fn the_proxy_saves_its_ledger_when_interrupted() {
    // The provider runs in this process; the proxy binary is a child sent a real signal.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt
        .block_on(llm_meter_mock::MockServer::start(llm_meter_mock::MockConfig::default()))
        .unwrap();
    for signal in ["INT", "TERM"] {
        let dir = std::env::temp_dir().join(format!("llm-meter-cli-ledger-{}-{signal}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "upstream = \"{}\"\n[prices.\"house-model\"]\ninput = 1000.0\noutput = 2000.0\n\
                 [[limits]]\nid = \"daily\"\nmax = 5.0\n[ledger]\nsnapshot = \"ledger.json\"\n",
                mock.base_url()
            ),
        )
        .unwrap();
        let config_arg = config.to_str().unwrap().to_owned();
        let (mut proxy, addr, _stderr) = start_proxy(&mock.base_url(), &["--config", &config_arg]);

        // A priced call naming the limit: its cost is what the saved ledger must hold.
        let answer: serde_json::Value = rt.block_on(async {
            reqwest::Client::new()
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("xProxy-Limit-IDs", "daily")
                .json(&serde_json::json!({"model": "house-model", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let cost = answer["xproxy_result"]["cost"]["total"]["base"]
            .as_f64()
            .unwrap_or_else(|| panic!("SIG{signal}: a priced answer: {answer}"));
        assert!(cost > 0.0, "SIG{signal}: {answer}");
        assert_eq!(answer["xproxy_result"]["limits"]["daily"]["state"], "ok", "{answer}");

        let status = Command::new("kill")
            .args([&format!("-{signal}"), &proxy.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut exit = None;
        for _ in 0..200 {
            if let Some(status) = proxy.0.try_wait().unwrap() {
                exit = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let exit = exit.unwrap_or_else(|| panic!("the proxy did not stop within 5 s of SIG{signal}"));
        assert!(exit.success(), "a clean exit on SIG{signal}: {exit:?}");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("ledger.json")).unwrap()).unwrap();
        let spend = saved["limits"]["daily"]["spend"].as_f64().unwrap();
        assert!(
            (spend - cost).abs() < 1e-12,
            "SIG{signal}: the saved ledger holds the call's spend {cost}: {saved}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A child process killed (if still running) when the test ends, passing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `llm-meter proxy` on a free port in front of `upstream` with `extra` flags; returns
/// the child and its address (from the `llm-meter proxy: http://ADDR/v1 -> …` line).
fn start_proxy(upstream: &str, extra: &[&str]) -> (KillOnDrop, String, std::io::BufReader<std::process::ChildStderr>) {
    let (proxy, addr, _, stderr) = start_proxy_with_admin(upstream, extra);
    (proxy, addr, stderr)
}

/// [`start_proxy`], also returning the admin address (`… (metrics: http://ADMIN/metrics)`).
fn start_proxy_with_admin(
    upstream: &str,
    extra: &[&str],
) -> (
    KillOnDrop,
    String,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let mut proxy = KillOnDrop(
        bin()
            .args(["proxy", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--upstream", upstream])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(proxy.0.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let addr = line
        .strip_prefix("llm-meter proxy: http://")
        .and_then(|rest| rest.split_once("/v1"))
        .map(|(addr, _)| addr.to_owned())
        .unwrap_or_else(|| panic!("no address announced: {line}"));
    let admin = line
        .split_once("(metrics: http://")
        .and_then(|(_, rest)| rest.split_once("/metrics"))
        .map(|(admin, _)| admin.to_owned())
        .unwrap_or_else(|| panic!("no admin address announced: {line}"));
    (proxy, addr, admin, stderr)
}

fn wait_exit(proxy: &mut KillOnDrop, within: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the proxy did not stop within {within:?}");
}

/// A stream through `addr`, read to its end; `(text, ended cleanly)`.
async fn stream_through(addr: &str) -> (String, bool) {
    use futures_util::StreamExt;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.extend_from_slice(&c),
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), false),
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), true)
}

fn slow_mock(rt: &tokio::runtime::Runtime) -> llm_meter_mock::MockServer {
    rt.block_on(llm_meter_mock::MockServer::start(llm_meter_mock::MockConfig {
        chunk_delay: Duration::from_millis(100),
        ..llm_meter_mock::MockConfig::default()
    }))
    .unwrap()
}

#[test]
fn on_sigterm_a_stream_in_flight_finishes_within_the_grace_period() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = slow_mock(&rt);
    let (mut proxy, addr, _stderr) = start_proxy(&mock.base_url(), &["--grace", "10s"]);
    let pid = proxy.0.id().to_string();
    let (text, clean) = rt.block_on(async {
        let stream = tokio::spawn({
            let addr = addr.clone();
            async move { stream_through(&addr).await }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        stream.await.unwrap()
    });
    assert!(clean && text.trim_end().ends_with("data: [DONE]"), "{text}");
    let exit = wait_exit(&mut proxy, Duration::from_secs(5));
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn past_the_grace_period_the_proxy_closes_what_is_open_and_logs_it_as_json() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = slow_mock(&rt);
    let (mut proxy, addr, stderr) = start_proxy(&mock.base_url(), &["--grace", "100ms", "--log-format", "json"]);
    let pid = proxy.0.id().to_string();
    let (text, clean) = rt.block_on(async {
        let stream = tokio::spawn({
            let addr = addr.clone();
            async move { stream_through(&addr).await }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        stream.await.unwrap()
    });
    assert!(!clean || !text.contains("[DONE]"), "the stream was cut: {text}");
    let exit = wait_exit(&mut proxy, Duration::from_secs(5));
    assert!(exit.success(), "{exit:?}");
    let lines: Vec<String> = std::io::BufRead::lines(stderr).map_while(Result::ok).collect();
    let warning = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "WARN")
        .unwrap_or_else(|| panic!("a JSON warning line: {lines:?}"));
    assert!(
        warning["fields"]["message"].as_str().unwrap().contains("grace period"),
        "{warning}"
    );
}

#[test]
fn check_config_passes_a_good_file_and_names_the_problem_in_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("llm-meter-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "upstream = \"https://api.openai.com/v1\"\n[proxy]\ntimeout = \"90s\"\nallowed_upstreams = [\"http://10.0.0.5:8000/v1\"]\nallow_private_upstreams = true\n[[limits]]\nid = \"daily\"\nmax = 5.0\nkind = \"block\"\n",
    )
    .unwrap();
    let out = bin().arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ok") && said.contains("1 limits"), "{said}");
    for (name, text, words) in [
        ("timeout.toml", "[proxy]\ntimeout = \"0s\"\n", "timeout"),
        ("limit.toml", "[[limits]]\nid = \"a\"\nmax = -1\n", "max"),
        ("typo.toml", "upstreem = \"x\"\n", "unknown field"),
        (
            "private.toml",
            "[proxy]\nallow_private_upstreams = \"yes\"\n",
            "allow_private_upstreams",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = bin().arg("check-config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name) && err.contains(words), "{name}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_prices_limits_and_labels_and_refuses_a_bad_file_keeping_connections() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = slow_mock(&rt);
    let dir = std::env::temp_dir().join(format!("llm-meter-cli-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    let write = |price: f64, max: f64, labels: &str| {
        std::fs::write(
            &config,
            format!(
                "upstream = \"{}\"\n[prices.\"house-model\"]\ninput = {price}\noutput = {price}\n\
                 [[limits]]\nid = \"daily\"\nmax = {max}\nkind = \"block\"\n{labels}",
                mock.base_url()
            ),
        )
        .unwrap()
    };
    write(1000.0, 1000.0, "");
    let config_arg = config.to_str().unwrap().to_owned();
    let (proxy, addr, admin, mut stderr) = start_proxy_with_admin(&mock.base_url(), &["--config", &config_arg]);
    let metrics = || {
        rt.block_on(async {
            reqwest::get(format!("http://{admin}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let pid = proxy.0.id().to_string();
    let hup = || assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let next_line = |stderr: &mut std::io::BufReader<std::process::ChildStderr>| {
        let mut line = String::new();
        std::io::BufRead::read_line(stderr, &mut line).unwrap();
        line
    };
    let call = |addr: &str| {
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("xProxy-Limit-IDs", "daily")
                .header("xProxy-User-ID", "user-reload")
                .json(&serde_json::json!({"model": "house-model", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        })
    };
    let per_token = |answer: &serde_json::Value| {
        let u = &answer["usage"];
        let tokens = u["prompt_tokens"].as_f64().unwrap() + u["completion_tokens"].as_f64().unwrap();
        answer["xproxy_result"]["cost"]["total"]["base"].as_f64().unwrap() / tokens * 1e6
    };
    let (status, first) = call(&addr);
    assert_eq!(status, 200, "{first}");
    assert!((per_token(&first) - 1000.0).abs() < 1e-6, "{first}");

    // A stream open across the reloads, to show no connection is dropped.
    let streaming = rt.spawn({
        let addr = addr.clone();
        async move { stream_through(&addr).await }
    });

    // New prices and a limit the spend so far already passes: both apply to the next call.
    write(3000.0, 0.000_001, "");
    hup();
    let line = next_line(&mut stderr);
    assert!(line.contains("reloaded"), "{line}");
    let (status, refused) = call(&addr);
    assert_eq!(status, 403, "the lowered block limit refuses: {refused}");
    assert!(
        !metrics().contains("user_id=\"user-reload\""),
        "user.id is not a label by default"
    );
    write(3000.0, 1000.0, "[labels]\nuser_id = 10\n");
    hup();
    assert!(next_line(&mut stderr).contains("reloaded"));
    let (status, second) = call(&addr);
    assert_eq!(status, 200, "{second}");
    assert!((per_token(&second) - 3000.0).abs() < 1e-6, "the new price: {second}");
    assert!(
        metrics().contains("user_id=\"user-reload\""),
        "the reloaded label policy applies"
    );

    // A bad file is refused whole; the running configuration stays.
    std::fs::write(&config, "[[limits]]\nid = \"daily\"\nmax = -1\n").unwrap();
    hup();
    let line = next_line(&mut stderr);
    assert!(line.contains("reload refused") && line.contains("positive"), "{line}");
    let (status, third) = call(&addr);
    assert_eq!(status, 200, "{third}");
    assert!(
        (per_token(&third) - 3000.0).abs() < 1e-6,
        "the prices in force stay: {third}"
    );

    let (text, clean) = rt.block_on(streaming).unwrap();
    assert!(
        clean && text.trim_end().ends_with("data: [DONE]"),
        "the stream survived: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
