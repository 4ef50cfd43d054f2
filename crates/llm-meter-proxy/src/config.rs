//! The configuration file (TOML): price overrides, limits and where their ledger is saved,
//! metric label policy, and per-model request defaults. Unknown keys are errors, so a typo is
//! reported instead of ignored.
//!
//! ```toml
//! [prices."my-finetune"]          # USD per million tokens; overrides and extends the table
//! input = 3.0
//! cached_input = 1.5
//! output = 12.0
//!
//! [[limits]]
//! id = "team-support-daily"
//! max = 25.0                      # USD
//! threshold = 0.8                 # state "exceeded" from 80 %
//! kind = "block"                  # or "allow" (default)
//! reset = "1d"                    # s, m, h, d, w
//!
//! [ledger]
//! snapshot = "ledger.json"        # restored at start, saved periodically and at exit
//! # or, shared by every replica:
//! # redis = "redis://127.0.0.1:6379/0"
//! # redis_password_env = "REDIS_PASSWORD"
//! # on_redis_error = "closed"     # or "open"
//! # redis_timeout = "250ms"
//!
//! [labels]                        # opt-in metric labels, each with its cap
//! user_id = 200
//!
//! [model_defaults."gpt-4o"]       # merged into requests that leave these fields unset
//! max_completion_tokens = 1024
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use llm_meter::{LimitConfig, LimitError, MemoryLedger, OnLedgerError, RedisLedger, SharedLedger};
use std::time::Duration;

use crate::ProxySettings;
use llm_meter::LabelPolicy;
use llm_meter::{Price, PriceTable};

/// A configuration file that could not be used; says which file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// `[ledger]`: where budgets are kept. Without `redis`, in memory (with its optional snapshot
/// file); with it, on Redis, shared by every replica.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Snapshot file, relative to the config file's directory when relative (memory ledger).
    pub snapshot: Option<PathBuf>,
    /// The shared ledger's Redis URL (`redis://[user:password@]host:port/db`). Never logged.
    pub redis: Option<String>,
    /// Environment variable holding the Redis password (keeps it out of the file).
    pub redis_password_env: Option<String>,
    /// `closed` (default: calls naming a block limit are refused while Redis does not answer)
    /// or `open` (served; spend queued and replayed).
    #[serde(default)]
    pub on_redis_error: OnLedgerError,
    /// Longest wait for one Redis operation (default `250ms`).
    pub redis_timeout: Option<String>,
    /// Prefix of the ledger's keys (default `llm-meter`).
    pub redis_key_prefix: Option<String>,
    /// Settlements queued at most while Redis does not answer (default 100000).
    pub redis_max_queued: Option<usize>,
}

impl std::fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("snapshot", &self.snapshot)
            .field("redis", &self.redis.as_deref().map(llm_meter::redact_url))
            .field("redis_password_env", &self.redis_password_env)
            .field("on_redis_error", &self.on_redis_error)
            .field("redis_timeout", &self.redis_timeout)
            .finish_non_exhaustive()
    }
}

/// The ledger a configuration asks for.
#[derive(Clone, Debug)]
pub enum ConfiguredLedger {
    /// In memory, snapshotted to a file when one is configured.
    Memory(std::sync::Arc<MemoryLedger>),
    /// On Redis, shared by replicas.
    Redis(std::sync::Arc<RedisLedger>),
}

impl ConfiguredLedger {
    /// As the meter takes it.
    pub fn shared(&self) -> SharedLedger {
        match self {
            ConfiguredLedger::Memory(l) => l.clone(),
            ConfiguredLedger::Redis(l) => l.clone(),
        }
    }

    /// Every tracked limit (the Redis ledger: as last read).
    pub fn statuses(&self) -> Vec<llm_meter::LimitStatus> {
        self.shared().statuses()
    }
}

/// `[labels]`: caps of opt-in labels (absent: label off), and of the default ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// `user.id` as a metric label, with this cap.
    pub user_id: Option<usize>,
    /// `account.name` as a metric label, with this cap.
    pub account_name: Option<usize>,
    /// `request.tags` as a metric label, with this cap.
    pub request_tags: Option<usize>,
    /// Cap of distinct models (default 200).
    pub models: Option<usize>,
    /// Cap of distinct use case names (default 500).
    pub use_cases: Option<usize>,
}

/// `[proxy]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFileConfig {
    /// Keys accepted in `xProxy-Api-Key` (empty: no proxy auth).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Environment variable holding the key sent upstream instead of the client's
    /// `Authorization` (keeps the secret out of the file).
    pub upstream_api_key_env: Option<String>,
    /// Other API bases a request may choose with `xProxy-Provider-BaseUri`.
    #[serde(default)]
    pub allowed_upstreams: Vec<String>,
    /// Lets those connect to loopback, private, link-local, unique-local and CGNAT addresses
    /// (default false: refused).
    #[serde(default)]
    pub allow_private_upstreams: bool,
    /// Largest request body, in bytes (default 8 MiB).
    pub body_limit_bytes: Option<usize>,
    /// Longest wait for a whole non-streaming answer (`600s`, `10m`).
    pub timeout: Option<String>,
    /// Longest wait for the next bytes of an answer (`120s`).
    pub read_timeout: Option<String>,
    /// Longest wait for a client's request head, or on an idle kept-alive connection
    /// (default `30s`).
    pub header_read_timeout: Option<String>,
}

/// `[upstreams]`: one per provider.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsConfig {
    /// OpenAI's API base (default `https://api.openai.com/v1`; what `--upstream` sets).
    pub openai: Option<String>,
    /// Anthropic's API origin (default `https://api.anthropic.com`).
    pub anthropic: Option<String>,
    /// The Azure OpenAI resource's endpoint (`https://my-resource.openai.azure.com`; no default).
    pub azure_openai: Option<String>,
}

/// The configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// OpenAI's API base, as `[upstreams] openai` (kept for older files; set one of the two).
    pub upstream: Option<String>,
    /// One upstream per provider.
    #[serde(default)]
    pub upstreams: UpstreamsConfig,
    /// Proxy listen address (default `127.0.0.1:8787`).
    pub listen: Option<String>,
    /// Admin listen address for `/metrics` and `/healthz` (default `127.0.0.1:9464`).
    pub metrics_listen: Option<String>,
    /// Proxy settings.
    #[serde(default)]
    pub proxy: ProxyFileConfig,
    /// Price overrides and additions.
    #[serde(default)]
    pub prices: HashMap<String, Price>,
    /// Limits.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Ledger persistence.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Metric labels.
    #[serde(default)]
    pub labels: LabelsConfig,
    /// Per-model request defaults.
    #[serde(default)]
    pub model_defaults: HashMap<String, toml::Table>,
    #[serde(skip)]
    dir: PathBuf,
}

impl Config {
    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config = Self::parse(&text).map_err(|e| err(e.message))?;
        config.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: PathBuf::from("<text>"),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        config.prices().map_err(|e| err(e.to_string()))?;
        for limit in &config.limits {
            limit.validate().map_err(|e| err(e.to_string()))?;
        }
        config.proxy_settings(None).map_err(|e| err(e.message))?;
        config.redis_timeout().map_err(|e| err(e.message))?;
        if config.ledger.redis.is_some() && config.ledger.snapshot.is_some() {
            return Err(err(
                "[ledger]: set either snapshot (memory ledger) or redis (shared ledger), not both".into(),
            ));
        }
        if let Some(url) = &config.ledger.redis {
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                return Err(err(format!(
                    "[ledger] redis {:?}: expected a URL like \"redis://127.0.0.1:6379/0\"",
                    llm_meter::redact_url(url)
                )));
            }
        }
        Ok(config)
    }

    fn redis_timeout(&self) -> Result<Duration, ConfigError> {
        match &self.ledger.redis_timeout {
            None => Ok(Duration::from_millis(250)),
            Some(t) => match llm_meter::parse_duration(t) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(ConfigError {
                    path: self.dir.join("<config>"),
                    message: format!("[ledger] redis_timeout {t:?}: expected a duration like \"250ms\""),
                }),
            },
        }
    }

    /// The ledger this file asks for: on Redis when `[ledger] redis` is set (needs a tokio
    /// runtime; connects when first used), else in memory, restored from its snapshot.
    pub fn shared_ledger(&self) -> Result<ConfiguredLedger, Box<dyn std::error::Error + Send + Sync>> {
        let Some(url) = &self.ledger.redis else {
            return Ok(ConfiguredLedger::Memory(std::sync::Arc::new(self.ledger()?)));
        };
        let mut builder = RedisLedger::builder(url.clone(), self.limits.clone())
            .on_error(self.ledger.on_redis_error)
            .timeout(self.redis_timeout()?);
        if let Some(var) = &self.ledger.redis_password_env {
            let password = std::env::var(var).map_err(|_| ConfigError {
                path: self.dir.join("<config>"),
                message: format!("[ledger] redis_password_env: variable {var} is not set"),
            })?;
            builder = builder.password(password);
        }
        if let Some(prefix) = &self.ledger.redis_key_prefix {
            builder = builder.key_prefix(prefix.clone());
        }
        if let Some(n) = self.ledger.redis_max_queued {
            builder = builder.max_queued(n);
        }
        Ok(ConfiguredLedger::Redis(std::sync::Arc::new(builder.build()?)))
    }

    /// The embedded price table with this file's overrides.
    pub fn prices(&self) -> Result<PriceTable, llm_meter::PricingError> {
        PriceTable::embedded().with_overrides(self.prices.clone())
    }

    /// Where the ledger snapshot lives, resolved against the config file's directory.
    pub fn snapshot_path(&self) -> Option<PathBuf> {
        self.ledger
            .snapshot
            .as_ref()
            .map(|p| if p.is_relative() { self.dir.join(p) } else { p.clone() })
    }

    /// The ledger for these limits, restored from the snapshot when one is configured.
    pub fn ledger(&self) -> Result<MemoryLedger, LimitError> {
        match self.snapshot_path() {
            Some(path) => MemoryLedger::restore(self.limits.clone(), &path),
            None => MemoryLedger::new(self.limits.clone()),
        }
    }

    /// Proxy settings from this file, with `upstream` overriding the file's when given.
    pub fn proxy_settings(&self, upstream: Option<&str>) -> Result<ProxySettings, ConfigError> {
        let err = |message: String| ConfigError {
            path: self.dir.join("<config>"),
            message,
        };
        let url = |what: &str, text: &str| {
            llm_meter::parse_api_base(text).map_err(|why| err(format!("{what} {text:?} is not an http(s) URL: {why}")))
        };
        let duration = |what: &str, text: &Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(t) => match llm_meter::parse_duration(t) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(err(format!(
                    "{what} {t:?}: expected a duration longer than zero, like \"30s\", \"500ms\" or \"10m\""
                ))),
            },
        };
        let mut s = ProxySettings::default();
        if self.upstream.is_some() && self.upstreams.openai.is_some() {
            return Err(err(
                "upstream and [upstreams] openai are the same setting: keep one".into()
            ));
        }
        if let Some(u) = upstream
            .or(self.upstream.as_deref())
            .or(self.upstreams.openai.as_deref())
        {
            s.upstream = url("upstream", u)?;
        }
        if let Some(u) = &self.upstreams.anthropic {
            s.anthropic_upstream = url("[upstreams] anthropic", u)?;
        }
        if let Some(u) = &self.upstreams.azure_openai {
            s.azure_openai_upstream = Some(url("[upstreams] azure_openai", u)?);
        }
        s.allowed_upstreams = self
            .proxy
            .allowed_upstreams
            .iter()
            .map(|u| url("allowed upstream", u))
            .collect::<Result<_, _>>()?;
        s.allow_private_upstreams = self.proxy.allow_private_upstreams;
        if self.proxy.keys.iter().any(|k| k.len() < 16) {
            return Err(err("proxy keys must be at least 16 characters".into()));
        }
        s.keys = self.proxy.keys.clone();
        if let Some(var) = &self.proxy.upstream_api_key_env {
            s.upstream_api_key =
                Some(std::env::var(var).map_err(|_| err(format!("upstream_api_key_env: variable {var} is not set")))?);
        }
        if let Some(limit) = self.proxy.body_limit_bytes {
            s.body_limit = limit;
        }
        s.timeout = duration("timeout", &self.proxy.timeout, s.timeout)?;
        s.read_timeout = duration("read_timeout", &self.proxy.read_timeout, s.read_timeout)?;
        s.header_read_timeout = duration(
            "header_read_timeout",
            &self.proxy.header_read_timeout,
            s.header_read_timeout,
        )?;
        Ok(s)
    }

    /// The metric label policy.
    pub fn label_policy(&self) -> LabelPolicy {
        let d = LabelPolicy::default();
        LabelPolicy {
            models: self.labels.models.unwrap_or(d.models),
            use_cases: self.labels.use_cases.unwrap_or(d.use_cases),
            user_id: self.labels.user_id,
            account_name: self.labels.account_name,
            request_tags: self.labels.request_tags,
            limit_ids: d.limit_ids,
        }
    }

    /// Model defaults as JSON objects, for [`MeterBuilder::model_defaults`](llm_meter::MeterBuilder::model_defaults).
    pub fn model_defaults_json(&self) -> Vec<(String, serde_json::Value)> {
        self.model_defaults
            .iter()
            .map(|(model, table)| {
                (
                    model.clone(),
                    serde_json::to_value(table).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let c = Config::parse(
            r#"
            [prices."my-model"]
            input = 1.0
            output = 2.0
            [[limits]]
            id = "daily"
            max = 5.0
            threshold = 0.8
            kind = "block"
            reset = "1d"
            [labels]
            user_id = 50
            [model_defaults."gpt-4o"]
            max_completion_tokens = 256
            temperature = 0.2
            "#,
        )
        .unwrap();
        assert_eq!(c.limits[0].reset, Some(std::time::Duration::from_secs(86_400)));
        assert_eq!(c.prices().unwrap().price("my-model").unwrap().output, 2.0);
        assert_eq!(c.label_policy().user_id, Some(50));
        let defaults = c.model_defaults_json();
        assert_eq!(defaults[0].1["max_completion_tokens"], 256);
    }

    #[test]
    fn one_upstream_per_provider() {
        let c = Config::parse(
            "[upstreams]\nopenai = \"https://o.example/v1\"\nanthropic = \"https://a.example\"\nazure_openai = \"https://r.openai.azure.com/\"",
        )
        .unwrap();
        let s = c.proxy_settings(None).unwrap();
        assert_eq!(s.upstream.as_str(), "https://o.example/v1");
        assert_eq!(s.anthropic_upstream.as_str(), "https://a.example/");
        assert_eq!(s.azure_openai_upstream.unwrap().as_str(), "https://r.openai.azure.com/");
        let flag = c.proxy_settings(Some("http://127.0.0.1:9/v1")).unwrap();
        assert_eq!(
            flag.upstream.as_str(),
            "http://127.0.0.1:9/v1",
            "--upstream sets openai"
        );
        let defaults = Config::parse("").unwrap().proxy_settings(None).unwrap();
        assert_eq!(defaults.anthropic_upstream.as_str(), "https://api.anthropic.com/");
        assert!(defaults.azure_openai_upstream.is_none());
    }

    #[test]
    fn the_readme_configuration_example_parses() {
        let readme = include_str!("../../../README.md");
        let example = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .find(|block| block.contains("[proxy]"))
            .expect("the README has a configuration example with [proxy]");
        // Parsing reads the upstream key's variable: name one every process has.
        let example = example.replace("\"OPENAI_API_KEY\"", "\"PATH\"");
        let c = Config::parse(&example).unwrap_or_else(|e| panic!("the README's example: {e}"));
        assert_eq!(c.proxy.header_read_timeout.as_deref(), Some("30s"));
    }

    #[test]
    fn the_header_read_timeout_is_30_seconds_unless_set() {
        let defaults = Config::parse("").unwrap().proxy_settings(None).unwrap();
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(30));
        let c = Config::parse("[proxy]\nheader_read_timeout = \"5s\"").unwrap();
        assert_eq!(
            c.proxy_settings(None).unwrap().header_read_timeout,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn private_upstreams_are_refused_unless_allowed() {
        let defaults = Config::parse("").unwrap().proxy_settings(None).unwrap();
        assert!(!defaults.allow_private_upstreams, "refused by default");
        let c =
            Config::parse("[proxy]\nallowed_upstreams = [\"http://10.0.0.5:8000/v1\"]\nallow_private_upstreams = true")
                .unwrap();
        let s = c.proxy_settings(None).unwrap();
        assert!(s.allow_private_upstreams);
        assert_eq!(s.allowed_upstreams[0].as_str(), "http://10.0.0.5:8000/v1");
    }

    #[test]
    fn mistakes_are_named() {
        for (text, words) in [
            ("[[limits]]\nid = \"a\"\nmax = 1\nkind = \"stop\"", "unknown variant"),
            ("[[limits]]\nid = \"a\"\nmax = -1", "positive"),
            ("[[limits]]\nid = \"a\"\nmax = 1\nreset = \"1 month\"", "reset"),
            ("[prices.x]\ninput = 1\noutput = -2", "\"x\""),
            ("[pricess.x]\ninput = 1", "unknown field"),
            ("limits = 3", "invalid type"),
            ("upstream = \"ftp://x\"", "http(s)"),
            ("[upstreams]\nanthropic = \"x\"", "[upstreams] anthropic"),
            ("[upstreams]\nbedrock = \"https://x\"", "unknown field"),
            (
                "upstream = \"https://a/v1\"\n[upstreams]\nopenai = \"https://b/v1\"",
                "keep one",
            ),
            ("[proxy]\nkeys = [\"short\"]", "16 characters"),
            ("[proxy]\ntimeout = \"soon\"", "timeout"),
            ("[proxy]\nheader_read_timeout = \"0s\"", "header_read_timeout"),
            ("[ledger]\nredis = \"http://u:secret@h\"", "redis://"),
            ("[ledger]\nredis = \"redis://h\"\nsnapshot = \"l.json\"", "not both"),
            ("[ledger]\non_redis_error = \"maybe\"", "unknown variant"),
            ("[ledger]\nredis_timeout = \"soon\"", "redis_timeout"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(words), "{text:?}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn the_redis_ledger_settings_parse_and_hide_the_password() {
        let c = Config::parse(
            "[ledger]\nredis = \"redis://app:hunter2hunter2@127.0.0.1:6379/0\"\non_redis_error = \"open\"\nredis_timeout = \"100ms\"",
        )
        .unwrap();
        assert_eq!(c.ledger.on_redis_error, OnLedgerError::Open);
        assert_eq!(c.redis_timeout().unwrap(), Duration::from_millis(100));
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && debug.contains("app:***"), "{debug}");
        assert_eq!(
            Config::parse("").unwrap().ledger.on_redis_error,
            OnLedgerError::Closed,
            "closed by default"
        );
    }
}
