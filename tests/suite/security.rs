//! Secrets never leave: calls through the proxy carrying a recognisable provider key, proxy key,
//! Anthropic key (`x-api-key`) and Azure key (`api-key`), answered, streamed, refused by the
//! proxy and refused by the provider; none of the keys appears in any exported span, metric,
//! log line, error body, record or ledger snapshot.

use std::io::Write;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use llm_meter::opentelemetry::trace::TracerProvider as _;
use llm_meter::opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use llm_meter::{names, AdmissionMode, CallRecord, LimitConfig, LimitKind, MemoryLedger, Telemetry};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

const PROVIDER_KEY: &str = "sk-proj-LEAKCHECKprovider0123456789";
const WRONG_PROVIDER_KEY: &str = "sk-proj-LEAKCHECKwrongkey0123456789";
const PROXY_KEY: &str = "pk-LEAKCHECKproxy0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-api03-LEAKCHECKanthropic0123";
const AZURE_KEY: &str = "0123LEAKCHECKazure456789abcdef";
/// In every key: no output may hold it.
const MARK: &str = "LEAKCHECK";

/// A log sink: every line the subscriber writes.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_reaches_spans_metrics_logs_error_bodies_records_or_the_ledger_snapshot() {
    // Spans to an in-memory exporter and every log line (TRACE) to a buffer, on this thread.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = Lines::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("security")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        );
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = MockServer::start(MockConfig {
        api_key: Some(PROVIDER_KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let telemetry = Telemetry::builder()
        .without_otlp()
        .service_name("security")
        .build()
        .unwrap();
    let ledger = Arc::new(
        MemoryLedger::new(vec![LimitConfig {
            id: "daily".into(),
            max: 100.0,
            threshold: None,
            kind: LimitKind::Allow,
            reset: None,
            admission: AdmissionMode::Spent,
        }])
        .unwrap(),
    );
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let meter = telemetry
        .meter_builder()
        .tracer(provider.tracer("security"))
        .ledger(ledger.clone())
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        keys: vec![PROXY_KEY.into()],
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let http = reqwest::Client::new();
    let call = |provider_key: &str, proxy_key: &str, stream: bool| {
        http.post(&url)
            .header("authorization", format!("Bearer {provider_key}"))
            .header(names::HEADER_API_KEY, proxy_key)
            .header("x-api-key", ANTHROPIC_KEY)
            .header("api-key", AZURE_KEY)
            .header(names::HEADER_LIMIT_IDS, "daily")
            .header(names::HEADER_USER_ID, "user-1")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}))
    };

    let mut bodies = Vec::new();
    let answered = call(PROVIDER_KEY, PROXY_KEY, false).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    bodies.push(answered.text().await.unwrap());
    let streamed = call(PROVIDER_KEY, PROXY_KEY, true).send().await.unwrap();
    assert_eq!(streamed.status(), 200);
    let mut chunks = streamed.bytes_stream();
    let mut text = Vec::new();
    while let Some(c) = chunks.next().await {
        text.extend_from_slice(&c.unwrap());
    }
    bodies.push(String::from_utf8(text).unwrap());
    let refused_by_proxy = call(PROVIDER_KEY, &format!("{PROXY_KEY}x"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(refused_by_proxy.status(), 401);
    bodies.push(refused_by_proxy.text().await.unwrap());
    let refused_by_provider = call(WRONG_PROVIDER_KEY, PROXY_KEY, false).send().await.unwrap();
    assert_eq!(refused_by_provider.status(), 401);
    bodies.push(refused_by_provider.text().await.unwrap());
    // The provider saw the caller's key (the proxy forwards it), and nothing of the proxy's.
    let seen = mock.received();
    assert!(seen.iter().all(|r| !format!("{r:?}").contains(PROXY_KEY)));
    assert!(
        seen.iter().any(|r| format!("{r:?}").contains(PROVIDER_KEY)),
        "the check sees a key where one is: {seen:?}"
    );

    let _ = provider.force_flush();
    let spans = format!("{:?}", exporter.get_finished_spans().unwrap());
    assert!(spans.contains("chat gpt-4o"), "spans were captured: {spans}");
    let metrics = llm_meter::prometheus::encode(telemetry.exposition().unwrap()).unwrap();
    assert!(metrics.contains("gen_ai_client_token_usage"), "{metrics}");
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let record_text = format!("{:?}", records.lock().unwrap());
    assert_eq!(
        records.lock().unwrap().len(),
        3,
        "two answers and the provider's refusal"
    );
    let dir = std::env::temp_dir().join(format!("llm-meter-security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot_path = dir.join("ledger.json");
    ledger.snapshot(&snapshot_path).unwrap();
    let snapshot = std::fs::read_to_string(&snapshot_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    for (what, text) in [
        ("spans", &spans),
        ("metrics", &metrics),
        ("logs", &log_text),
        ("records", &record_text),
        ("ledger snapshot", &snapshot),
    ]
    .into_iter()
    .chain(bodies.iter().map(|b| ("a response body", b)))
    {
        for key in [
            PROVIDER_KEY,
            WRONG_PROVIDER_KEY,
            PROXY_KEY,
            ANTHROPIC_KEY,
            AZURE_KEY,
            MARK,
        ] {
            assert!(!text.contains(key), "{what} hold {key:?}:\n{text}");
        }
    }
}
