//! `llm-meter demo`: the mix of annotated calls lands in the metrics served on /metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use llm_meter::Telemetry;
use llm_meter_cli::demo::{run, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic_shows_on_metrics() {
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let config = DemoConfig {
        calls: 120,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..DemoConfig::default()
    };
    run(config, &telemetry).await.unwrap();
    let text = llm_meter::prometheus::encode(telemetry.exposition().unwrap()).unwrap();
    for use_case in [
        "support.triage",
        "support.reply",
        "search.rerank",
        "docs.summarize",
        "billing.explain",
    ] {
        assert!(
            text.contains(&format!("use_case_name=\"{use_case}\"")),
            "{use_case} missing"
        );
    }
    let count: f64 = text
        .lines()
        .filter(|l| l.starts_with("gen_ai_client_operation_duration_seconds_count"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(count, 120.0, "every call is counted once");
    assert!(text.contains("gen_ai_client_operation_time_to_first_chunk_seconds_count"));
    assert!(
        text.contains(r#"llm_meter_limit_state{limit_id="team-support-daily",limit_kind="allow"} 1"#),
        "threshold passed"
    );
    assert!(
        text.contains(r#"llm_meter_limit_blocked_total{limit_id="trial-org"}"#),
        "the block limit refused calls"
    );
    assert!(text.lines().any(|l| l.starts_with("llm_meter_cost_usd_total{")));
    for provider in ["openai", "anthropic", "azure.ai.openai"] {
        assert!(
            text.contains(&format!("gen_ai_provider_name=\"{provider}\"")),
            "the demo mixes providers: {provider} missing"
        );
    }
    assert!(
        text.contains("llm_meter_ratelimit_remaining{") && text.contains("llm_meter_ratelimit_kind=\"input_tokens\""),
        "Anthropic's input-token rate limit is a gauge kind"
    );
    assert!(text.contains("gen_ai_client_inference_usage_cache_creation_input_tokens_total{"));
}
