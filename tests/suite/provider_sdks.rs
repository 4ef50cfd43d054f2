//! End to end with the real Python SDKs of the proxy's other APIs: tests/python/provider_sdks_e2e.py
//! drives the `anthropic` SDK (Messages), `openai.AzureOpenAI` (chat completions on a
//! deployment) and `openai.OpenAI().responses` through a proxy in front of the mock provider, on
//! each API's native route and Pay-i's, streaming and not. The script checks that each SDK
//! parses the answer as the mock's direct one and parses every `xproxy_result` with Pay-i's
//! own model; it prints what each SDK sent and saw of each call (`CALL {json}`: credential
//! headers, response headers, usage, model, `xproxy_result`). This side holds the proxy's
//! records against those lines (provider, usage, cost, rate limits; what the provider did not
//! send is absent, not 0) and the keys each SDK sent against what reached the mock.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_meter::{
    names, parse_duration, parse_rfc3339, Api, CallRecord, MemoryLedger, Meter, PriceTable, RateLimit, Usage,
};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::Value;

const INSTALL: &str = "the Anthropic and OpenAI Python SDKs and Pay-i's `payi` package are needed: run \
     scripts/test.sh (it makes .venv with `pip install \"openai>=1.40\" anthropic payi pyyaml`), or set \
     LLM_METER_PYTHON to a python that has all three";

/// The keys the script's SDKs send (its `ANTHROPIC_KEY`, `AZURE_KEY`, `OPENAI_KEY`).
const ANTHROPIC_KEY: &str = "sk-ant-python-sdk-key";
const AZURE_KEY: &str = "azure-python-sdk-key";
const OPENAI_KEY: &str = "sk-python-sdk-key";
/// The header the script adds to its calls through the proxy (not to its direct ones), which
/// the proxy forwards.
const VIA_PROXY: &str = "x-e2e-via";

/// Calls through the proxy, per API: Anthropic (create, create(stream=True), messages.stream)
/// and Responses (create, create(stream=True), responses.stream) on two routes each; Azure
/// (create, a stream with usage, a stream without) on two routes.
const CALLS: [(&str, usize); 3] = [("anthropic", 6), ("azure", 6), ("responses", 6)];

fn python() -> PathBuf {
    let python = std::env::var_os("LLM_METER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    // Finds the packages without importing them (the script does, once: a few seconds).
    let check = Command::new(&python)
        .args([
            "-c",
            "import importlib.util as u\n\
             missing = [m for m in ('anthropic', 'openai', 'payi') if u.find_spec(m) is None]\n\
             if missing: raise SystemExit('No module named ' + ', '.join(missing))",
        ])
        .output();
    match check {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import anthropic, openai and payi ({}): {INSTALL}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("no python at {} ({e}): {INSTALL}", python.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_azure_and_responses_python_sdks_work_through_the_proxy() {
    let python = python();
    // Cache reads (every API) and writes (Anthropic) in every answer.
    let mock = MockServer::start(MockConfig {
        cached_fraction: 0.25,
        cache_write_fraction: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .ledger(Arc::new(MemoryLedger::new(vec![]).unwrap()))
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let origin = mock.azure_endpoint();
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        anthropic_upstream: origin.parse().unwrap(),
        azure_openai_upstream: Some(origin.parse().unwrap()),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/provider_sdks_e2e.py");
    let checks = std::fs::read_to_string(&script)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("def test_"))
        .count();
    assert!(checks >= 16, "the script lost checks: {checks}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}"))
            .arg(origin)
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

    let calls: Vec<Value> = report
        .lines()
        .filter_map(|l| l.strip_prefix("CALL "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (api, n) in CALLS {
        let reported = calls.iter().filter(|c| c["api"] == api).count();
        assert_eq!(reported, n, "{api}: calls the script reported");
    }
    let total: usize = CALLS.iter().map(|(_, n)| n).sum();
    // A stream's record is finished before its terminal event goes out: all are in by now.
    let records = records.lock().unwrap().clone();
    assert_eq!(records.len(), total, "one record per call through the proxy");
    let mut matched = HashSet::new();
    for call in &calls {
        let label = call["label"].as_str().unwrap();
        let id_header = if call["api"] == "anthropic" {
            names::HEADER_ANTHROPIC_REQUEST_ID
        } else {
            names::HEADER_REQUEST_ID
        };
        let id = header(call, id_header).unwrap_or_else(|| panic!("{label}: no {id_header} for the SDK"));
        let (i, record) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.meta.request_id() == Some(id))
            .unwrap_or_else(|| panic!("{label}: no record of the provider's request {id}"));
        assert!(matched.insert(i), "{label}: two calls, one record");
        check_record(label, call, record);
    }
    check_received(&mock, &calls);
}

/// A response header as the SDK got it.
fn header<'a>(call: &'a Value, name: &str) -> Option<&'a str> {
    call["headers"][name].as_str()
}

fn count(call: &Value, name: &str) -> Option<u64> {
    header(call, name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: {v}")))
}

/// The usage the SDK parsed, in the record's terms: input tokens count cache reads and (for
/// Anthropic, whose `input_tokens` leaves both out) cache writes; a count the SDK did not get
/// is `None`.
fn expected_usage(api: &str, u: &Value) -> Usage {
    let mut usage = Usage::default();
    match api {
        "anthropic" => {
            let read = u["cache_read_input_tokens"].as_u64();
            let write = u["cache_creation_input_tokens"].as_u64();
            usage.input_tokens = u["input_tokens"].as_u64().unwrap() + read.unwrap_or(0) + write.unwrap_or(0);
            usage.output_tokens = u["output_tokens"].as_u64().unwrap();
            usage.cached_input_tokens = read;
            usage.cache_creation_input_tokens = write;
            usage.cache_creation_1h_input_tokens = u["cache_creation"]["ephemeral_1h_input_tokens"].as_u64();
        }
        "azure" => {
            let (p, c) = (&u["prompt_tokens_details"], &u["completion_tokens_details"]);
            usage.input_tokens = u["prompt_tokens"].as_u64().unwrap();
            usage.output_tokens = u["completion_tokens"].as_u64().unwrap();
            usage.total_tokens = u["total_tokens"].as_u64();
            usage.cached_input_tokens = p["cached_tokens"].as_u64();
            usage.input_audio_tokens = p["audio_tokens"].as_u64();
            usage.reasoning_tokens = c["reasoning_tokens"].as_u64();
            usage.output_audio_tokens = c["audio_tokens"].as_u64();
            usage.accepted_prediction_tokens = c["accepted_prediction_tokens"].as_u64();
            usage.rejected_prediction_tokens = c["rejected_prediction_tokens"].as_u64();
        }
        "responses" => {
            usage.input_tokens = u["input_tokens"].as_u64().unwrap();
            usage.output_tokens = u["output_tokens"].as_u64().unwrap();
            usage.total_tokens = u["total_tokens"].as_u64();
            usage.cached_input_tokens = u["input_tokens_details"]["cached_tokens"].as_u64();
            usage.reasoning_tokens = u["output_tokens_details"]["reasoning_tokens"].as_u64();
        }
        other => panic!("unknown api {other}"),
    }
    usage
}

/// An OpenAI-style rate limit (`x-ratelimit-{limit,remaining,reset}-{kind}`) as the SDK's
/// headers say it.
fn openai_limit(call: &Value, kind: &str) -> RateLimit {
    let name = |field: &str| format!("{}{field}-{kind}", names::HEADER_RATELIMIT_PREFIX);
    let reset = name("reset");
    RateLimit {
        limit: count(call, &name("limit")),
        remaining: count(call, &name("remaining")),
        reset: header(call, &reset).map(|v| parse_duration(v).unwrap_or_else(|| panic!("{reset}: {v}"))),
    }
}

/// An Anthropic rate limit (`anthropic-ratelimit-{kind}-{limit,remaining,reset}`): limit and
/// remaining as sent; the reset, an RFC 3339 time, as the time from the call's start to it
/// (within the two seconds between the proxy reading the headers, the whole-second time, and
/// the start).
fn check_anthropic_limit(label: &str, call: &Value, r: &CallRecord, got: &RateLimit, kind: &str) {
    let name = |field: &str| format!("{}{kind}-{field}", names::HEADER_ANTHROPIC_RATELIMIT_PREFIX);
    let (limit, remaining, reset) = (name("limit"), name("remaining"), name("reset"));
    assert_eq!(got.limit, count(call, &limit), "{label}: {limit}");
    assert_eq!(got.remaining, count(call, &remaining), "{label}: {remaining}");
    let at = parse_rfc3339(header(call, &reset).unwrap_or_else(|| panic!("{label}: no {reset}"))).unwrap();
    let want = at.duration_since(r.timings.started_at).unwrap_or_default();
    let got = got.reset.unwrap_or_else(|| panic!("{label}: {reset} not recorded"));
    assert!(
        got.abs_diff(want) <= Duration::from_secs(2) && got <= Duration::from_secs(60),
        "{label}: {reset}: recorded {got:?}, the SDK's header says {want:?}"
    );
}

fn check_record(label: &str, call: &Value, r: &CallRecord) {
    let api = call["api"].as_str().unwrap();
    let (provider, wire) = match api {
        "anthropic" => (names::PROVIDER_ANTHROPIC, Api::AnthropicMessages),
        "azure" => (names::PROVIDER_AZURE_OPENAI, Api::ChatCompletions),
        _ => (names::PROVIDER_OPENAI, Api::Responses),
    };
    assert_eq!(&*r.provider, provider, "{label}");
    assert_eq!(r.request.api, wire, "{label}");
    assert_eq!(r.request.stream, call["stream"].as_bool().unwrap(), "{label}");
    assert_eq!((r.status, r.error), (Some(200), None), "{label}");
    assert_eq!(
        r.response.model.as_deref(),
        call["model"].as_str(),
        "{label}: the answer's model"
    );

    // Usage and cost: exactly what the SDK parsed, priced by the answer's model.
    let usage = expected_usage(api, &call["usage"]);
    assert_eq!(r.usage, Some(usage), "{label}: the usage the SDK saw");
    assert!(
        usage.cached_input_tokens.unwrap_or(0) > 0,
        "{label}: the mock reads from its cache"
    );
    if api == "anthropic" {
        assert!(
            usage.cache_creation_input_tokens.unwrap_or(0) > 0,
            "{label}: and writes to it"
        );
    }
    let cost = PriceTable::embedded()
        .cost_at(r.model(), r.response.service_tier.as_deref(), &usage)
        .unwrap_or_else(|| panic!("{label}: {} is priced", r.model()));
    assert_eq!(r.cost, Some(cost), "{label}");
    let x = &call["xproxy_result"];
    if !x.is_null() {
        assert_eq!(
            x["request_id"],
            r.id.to_string(),
            "{label}: xproxy_result is this call's"
        );
        let base = |part: &str| x["cost"][part]["base"].as_f64().unwrap();
        assert!((base("total") - cost.total).abs() < 1e-12, "{label}: {x}");
        assert!((base("input") - cost.input).abs() < 1e-12, "{label}: {x}");
        assert!((base("output") - cost.output).abs() < 1e-12, "{label}: {x}");
    }

    // Rate limits and debug headers: what the SDK got, and nothing it did not.
    assert_eq!(r.meta.retry_after, None, "{label}");
    assert!(header(call, names::HEADER_RETRY_AFTER).is_none(), "{label}");
    match api {
        "anthropic" => {
            assert_eq!(
                r.meta.organization(),
                header(call, names::HEADER_ANTHROPIC_ORGANIZATION_ID),
                "{label}"
            );
            let kinds = [
                (&r.meta.requests, "requests"),
                (&r.meta.tokens, "tokens"),
                (&r.meta.input_tokens, "input-tokens"),
                (&r.meta.output_tokens, "output-tokens"),
            ];
            for (got, kind) in kinds {
                check_anthropic_limit(label, call, r, got, kind);
            }
            assert_eq!(r.meta.processing, None, "{label}: Anthropic sends no processing time");
        }
        _ => {
            assert_eq!(
                r.meta.organization(),
                header(call, names::HEADER_OPENAI_ORGANIZATION),
                "{label}"
            );
            let (requests, tokens) = (openai_limit(call, "requests"), openai_limit(call, "tokens"));
            assert_eq!(r.meta.requests, requests, "{label}: request limits");
            assert_eq!(r.meta.tokens, tokens, "{label}: token limits");
            assert!(
                r.meta.input_tokens.is_empty() && r.meta.output_tokens.is_empty(),
                "{label}"
            );
            let processing = count(call, names::HEADER_OPENAI_PROCESSING_MS).map(Duration::from_millis);
            assert_eq!(r.meta.processing, processing, "{label}: openai-processing-ms");
            if api == "azure" {
                // Azure sends the remaining counts only: no limits, no resets, no processing time.
                assert!(requests.remaining.is_some() && tokens.remaining.is_some(), "{label}");
                assert_eq!(
                    (requests.limit, requests.reset, tokens.limit, tokens.reset),
                    (None, None, None, None)
                );
                assert_eq!((processing, r.meta.organization()), (None, None), "{label}");
            } else {
                assert!(requests.limit.is_some() && requests.reset.is_some(), "{label}");
                assert!(
                    tokens.limit.is_some() && tokens.reset.is_some() && processing.is_some(),
                    "{label}"
                );
            }
        }
    }
}

/// The mock's path for each API's calls.
fn upstream_path(api: &str) -> &'static str {
    match api {
        "anthropic" => "/v1/messages",
        "azure" => "/openai/deployments/gpt-4o/chat/completions",
        _ => "/v1/responses",
    }
}

/// The request headers the script reports as sent (its `SENT`).
const SENT: [&str; 4] = ["authorization", "x-api-key", "api-key", "anthropic-version"];

/// Every request reached the mock on its provider's own path, without the `xProxy-*` headers;
/// the proxy's, in the order the script made them, with the credential and version headers
/// exactly as each SDK sent them (its own key, in whichever header the SDK puts it: the
/// `anthropic` SDK's older releases send `x-api-key`, 2.15 sends `Authorization: Bearer`).
fn check_received(mock: &MockServer, calls: &[Value]) {
    let seen = mock.received();
    assert!(
        seen.len() < MockServer::KEPT_REQUESTS,
        "every request kept: {}",
        seen.len()
    );
    let text =
        |q: &llm_meter_mock::ReceivedRequest, name: &str| q.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    for q in &seen {
        assert!(
            q.headers.keys().all(|k| !k.as_str().starts_with("xproxy-")),
            "{} {}: an xProxy header went upstream",
            q.method,
            q.path
        );
        assert!(
            CALLS.iter().any(|(api, _)| upstream_path(api) == q.path),
            "unexpected request upstream: {} {}",
            q.method,
            q.path
        );
        if q.path.starts_with("/openai/") {
            assert_eq!(q.query.as_deref(), Some("api-version=2024-10-21"));
        }
    }
    for (api, n) in CALLS {
        let key = match api {
            "anthropic" => ANTHROPIC_KEY,
            "azure" => AZURE_KEY,
            _ => OPENAI_KEY,
        };
        let proxied: Vec<_> = seen
            .iter()
            .filter(|q| q.path == upstream_path(api) && q.headers.contains_key(VIA_PROXY))
            .collect();
        let made: Vec<&Value> = calls.iter().filter(|c| c["api"] == api).collect();
        assert_eq!(proxied.len(), n, "{api}: the proxy's requests that reached the mock");
        for (q, call) in proxied.into_iter().zip(made) {
            let label = call["label"].as_str().unwrap();
            for name in SENT {
                assert_eq!(
                    text(q, name).as_deref(),
                    call["sent"][name].as_str(),
                    "{label}: {name} reached the mock as the SDK sent it"
                );
            }
            let bearer = format!("Bearer {key}");
            let credentials = [
                call["sent"]["authorization"].as_str(),
                call["sent"]["x-api-key"].as_str(),
                call["sent"]["api-key"].as_str(),
            ];
            assert!(
                credentials.contains(&Some(key)) || credentials.contains(&Some(bearer.as_str())),
                "{label}: the SDK sent its key: {}",
                call["sent"]
            );
        }
    }
}
