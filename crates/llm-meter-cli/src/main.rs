//! `llm-meter`: the demo, the observing proxy, the mock provider and a config check.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use llm_meter::{LogFormat, Telemetry};
use llm_meter_cli::demo::{self, DemoConfig};
use llm_meter_mock::{self as mock, MockConfig};
use llm_meter_proxy::config::{Config, ConfiguredLedger};

#[derive(Parser)]
#[command(name = "llm-meter", version, about = "Observability for LLM chat-completion calls")]
struct Cli {
    /// Log lines on stderr as text or as one JSON object per line (`RUST_LOG` filters them).
    #[arg(long, global = true, value_enum, default_value_t = LogLines::Text)]
    log_format: LogLines,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogLines {
    Text,
    Json,
}

impl From<LogLines> for LogFormat {
    fn from(lines: LogLines) -> Self {
        match lines {
            LogLines::Text => LogFormat::Text,
            LogLines::Json => LogFormat::Json,
        }
    }
}

/// A Go-style duration (`30s`, `500ms`, `2m`).
fn duration(text: &str) -> Result<Duration, String> {
    llm_meter::parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 30s, 500ms or 2m"))
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded mock provider and a mix of annotated calls, then print a summary.
    Demo {
        /// Number of calls (per round with --forever).
        #[arg(long, default_value_t = 120)]
        calls: usize,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Address for /metrics and /healthz.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,
        /// Keep sending traffic until interrupted.
        #[arg(long)]
        forever: bool,
    },
    /// Run the observing proxy (OpenAI-compatible, Pay-i-compatible routes).
    Proxy {
        /// Address to listen on [default: 127.0.0.1:8787, or the config's `listen`].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Upstream API base [default: https://api.openai.com/v1, or the config's `upstream`].
        #[arg(long)]
        upstream: Option<String>,
        /// Admin address for /metrics and /healthz [default: 127.0.0.1:9464].
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Configuration file (TOML): upstream, prices, limits, labels, proxy keys, model defaults.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// On SIGTERM or SIGINT: how long calls and streams in flight may take to finish before
        /// their connections are closed.
        #[arg(long, default_value = "30s", value_parser = duration)]
        grace: Duration,
        /// What is recorded of each call: `auto` (metrics, plus spans when OTLP trace export is
        /// on and OTEL_TRACES_SAMPLER is not always_off), `full` (metrics and spans), `metrics`,
        /// or `off` (calls are still priced, limited and answered with xproxy_result).
        #[arg(long, value_enum, default_value_t = ObserveArg::Auto)]
        telemetry: ObserveArg,
    },
    /// Check a configuration file: exits 0 when the proxy would start with it, else 1 naming
    /// the problem.
    CheckConfig {
        /// The configuration file (TOML).
        file: std::path::PathBuf,
    },
    /// Run the mock OpenAI provider alone.
    Mock {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Milliseconds before the response head.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Milliseconds between stream chunks.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Content chunks per stream.
        #[arg(long, default_value_t = 8)]
        chunks: u32,
        /// Output tokens per call.
        #[arg(long, default_value_t = 44)]
        completion_tokens: u64,
        /// Fraction of calls that fail with 429 or 500 (0..=1).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Requests per rate-limit window.
        #[arg(long, default_value_t = 500)]
        limit_requests: u64,
        /// Tokens per rate-limit window.
        #[arg(long, default_value_t = 30_000)]
        limit_tokens: u64,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn address(flag: Option<SocketAddr>, file: Option<&str>, what: &str, default: &str) -> Result<SocketAddr, BoxError> {
    match (flag, file) {
        (Some(a), _) => Ok(a),
        (None, Some(text)) => text
            .parse()
            .map_err(|_| format!("config {what} {text:?} is not an address like 127.0.0.1:8787").into()),
        (None, None) => Ok(default.parse()?),
    }
}

/// What `llm-meter proxy` was asked for.
struct ProxyArgs {
    listen: Option<SocketAddr>,
    upstream: Option<String>,
    metrics_listen: Option<SocketAddr>,
    config_path: Option<std::path::PathBuf>,
    grace: Duration,
    log_format: LogFormat,
    observation: llm_meter_proxy::Observation,
}

/// `--telemetry`: see [`llm_meter_proxy::Observation`].
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ObserveArg {
    Auto,
    Full,
    Metrics,
    Off,
}

impl From<ObserveArg> for llm_meter_proxy::Observation {
    fn from(arg: ObserveArg) -> Self {
        match arg {
            ObserveArg::Auto => Self::Auto,
            ObserveArg::Full => Self::Full,
            ObserveArg::Metrics => Self::Metrics,
            ObserveArg::Off => Self::Off,
        }
    }
}

async fn run_proxy(args: ProxyArgs) -> Result<(), BoxError> {
    let ProxyArgs {
        listen,
        upstream,
        metrics_listen,
        config_path,
        grace,
        log_format,
        observation,
    } = args;
    let config = match &config_path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let listen = address(listen, config.listen.as_deref(), "listen", "127.0.0.1:8787")?;
    let metrics_listen = address(
        metrics_listen,
        config.metrics_listen.as_deref(),
        "metrics_listen",
        "127.0.0.1:9464",
    )?;
    let telemetry = Telemetry::builder()
        .service_name("llm-meter-proxy")
        .labels(config.label_policy())
        .build()?
        .install_with_logs(log_format)?;
    let (proxy, ledger) = llm_meter_proxy::from_config(&config, upstream.as_deref(), &telemetry, observation)?;
    let upstream = config.proxy_settings(upstream.as_deref())?.upstream;
    // Listen for SIGINT and SIGTERM before announcing the address, so no signal is missed.
    let mut stop = Stop::new()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    let admin = llm_meter_proxy::spawn_admin(metrics_listen, &telemetry, &proxy)
        .await
        .map_err(|e| format!("cannot serve /metrics on {metrics_listen}: {e}"))?;
    eprintln!("llm-meter proxy: http://{bound}/v1 -> {upstream}  (metrics: http://{admin}/metrics)");
    let memory = match &ledger {
        ConfiguredLedger::Memory(m) => Some(m.clone()),
        ConfiguredLedger::Redis(r) => {
            eprintln!(
                "llm-meter proxy: budgets on the shared Redis ledger {} (on error: {:?})",
                r.url(),
                r.on_error()
            );
            None
        }
    };
    let snapshot = config.snapshot_path().filter(|_| memory.is_some());
    let meter = proxy.meter().clone();
    let mut running = config;
    let save = |path: &std::path::Path| {
        if let Some(Err(e)) = memory.as_ref().map(|m| m.snapshot(path)) {
            tracing::warn!(target: "llm_meter", "saving the ledger failed: {e}");
        }
    };
    let (shutdown, stopping) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve_until(
        listener,
        async {
            let _ = stopping.await;
        },
        grace,
    ));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => if let Some(path) = &snapshot { save(path) },
            signal = stop.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => match reload(config_path.as_deref(), &mut running, &meter, &telemetry) {
                    Ok(what) => eprintln!("llm-meter proxy: reloaded {what}"),
                    Err(e) => eprintln!("llm-meter proxy: reload refused, the running configuration is kept: {e}"),
                },
            },
        }
    }
    // Stop accepting, let what is in flight finish (up to the grace period), then save the
    // ledger. Spans and metrics are exported when `telemetry` (the guard) drops: its shutdown
    // exports what each provider holds, bounded at 5 s each, so no flush comes first (one
    // would wait on a collector that does not answer twice over: `bench/exporter_faults.py`).
    eprintln!("llm-meter proxy: stopping (grace {grace:?})");
    let _ = shutdown.send(());
    match serving.await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => eprintln!("llm-meter proxy: grace period over, open connections closed"),
        Ok(Err(e)) => tracing::warn!(target: "llm_meter", "proxy stopped: {e}"),
        Err(e) => tracing::warn!(target: "llm_meter", "proxy task failed: {e}"),
    }
    if let Some(path) = &snapshot {
        save(path);
    }
    if let ConfiguredLedger::Redis(r) = &ledger {
        // Spend still queued (Redis was away) goes to Redis before the process ends.
        if let Err(e) = llm_meter::Ledger::flush(r.as_ref()).await {
            eprintln!("llm-meter proxy: settlements not applied to Redis at exit: {e}");
        }
    }
    Ok(())
}

/// SIGHUP: reads the configuration file again and applies its prices, limits and metric label
/// policy to the running proxy, without touching a connection. A file that does not pass the
/// checks the proxy starts with (or limits the ledger cannot change while running) is refused
/// whole, and the running configuration is kept. Other settings (listen addresses, upstreams,
/// proxy keys, timeouts, the ledger itself) take a restart.
fn reload(
    path: Option<&std::path::Path>,
    running: &mut Config,
    meter: &llm_meter::Meter,
    telemetry: &Telemetry,
) -> Result<String, BoxError> {
    let path = path.ok_or("the proxy was started without --config: nothing to reload")?;
    let next = Config::from_file(path)?;
    next.proxy_settings(None)?;
    let prices = next.prices()?;
    if next.limits != running.limits {
        if let Some(ledger) = meter.ledger() {
            ledger.reconfigure(next.limits.clone())?;
        }
    }
    meter.set_prices(prices);
    telemetry.metrics().set_label_policy(&next.label_policy());
    let what = format!(
        "{}: {} price overrides, {} limits, labels",
        path.display(),
        next.prices.len(),
        next.limits.len()
    );
    *running = next;
    Ok(what)
}

fn check_config(path: &std::path::Path) -> Result<(), BoxError> {
    let config = Config::from_file(path)?;
    let settings = config.proxy_settings(None)?;
    println!(
        "{}: ok (upstream {}, {} limits, {} proxy keys)",
        path.display(),
        settings.upstream,
        config.limits.len(),
        settings.keys.len()
    );
    Ok(())
}

/// What a signal asks of the proxy.
enum Signal {
    Stop,
    Reload,
}

/// SIGINT (Ctrl-C) and SIGTERM (`docker stop`) stop; SIGHUP reloads. Registered once.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal: SIGINT or SIGTERM (stop), or SIGHUP (reload).
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.hangup.recv() => Signal::Reload,
        }
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = LogFormat::from(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = runtime.block_on(async {
        match cli.command {
            Command::Demo {
                calls,
                concurrency,
                metrics_listen,
                forever,
            } => {
                // The demo opts `user.id` in as a metric label with a cap below its 7 users,
                // so the use-case dashboard's users panels and the cap's overflow both show.
                let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "llm-meter-demo".to_owned());
                let labels = llm_meter::LabelPolicy {
                    user_id: Some(5),
                    ..Default::default()
                };
                let telemetry = Telemetry::builder()
                    .service_name(service)
                    .labels(labels)
                    .build()?
                    .install_with_logs(log_format)?;
                let config = DemoConfig {
                    calls,
                    concurrency,
                    metrics_listen: Some(metrics_listen),
                    forever,
                    ..DemoConfig::default()
                };
                let mut stop = Stop::new()?;
                tokio::select! {
                    result = demo::run(config, &telemetry) => result,
                    _ = stop.wait() => Ok(()),
                }
            }
            Command::Proxy {
                listen,
                upstream,
                metrics_listen,
                config,
                grace,
                telemetry,
            } => {
                run_proxy(ProxyArgs {
                    listen,
                    upstream,
                    metrics_listen,
                    config_path: config,
                    grace,
                    log_format,
                    observation: telemetry.into(),
                })
                .await
            }
            Command::CheckConfig { file } => check_config(&file),
            Command::Mock {
                listen,
                latency_ms,
                chunk_delay_ms,
                chunks,
                completion_tokens,
                error_rate,
                limit_requests,
                limit_tokens,
            } => {
                if !(0.0..=1.0).contains(&error_rate) {
                    return Err(format!("--error-rate must be between 0 and 1, got {error_rate}").into());
                }
                let config = MockConfig {
                    latency: Duration::from_millis(latency_ms),
                    chunk_delay: Duration::from_millis(chunk_delay_ms),
                    chunks: chunks.max(1),
                    completion_tokens,
                    error_rate,
                    limit_requests,
                    limit_tokens,
                    ..MockConfig::default()
                };
                mock::serve_forever(listen, config)
                    .await
                    .map_err(|e| format!("mock on {listen}: {e}").into())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
