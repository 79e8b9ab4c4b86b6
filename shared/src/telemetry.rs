//! Logging and metrics.
//!
//! Logs are JSON lines on stdout (CloudWatch picks them up). Nothing logged may contain a token,
//! code, secret or raw personal data: log ids, counts and hashes only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing_subscriber::filter::Targets;

/// Amazon answers seen by this process since the last metrics record, by class:
/// all, 4xx other than 429, 429, 5xx. Drained into every [`Metrics::emit`].
static AMAZON_ANSWERS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
const AMAZON_METRICS: [&str; 4] = ["AmazonRequests", "Amazon4xx", "Amazon429", "Amazon5xx"];

/// Counts one HTTP answer from Amazon (every attempt, retries included), for the
/// `AmazonRequests` / `Amazon4xx` / `Amazon429` / `Amazon5xx` metrics the alarms watch.
pub fn record_amazon_status(status: u16) {
    AMAZON_ANSWERS[0].fetch_add(1, Ordering::Relaxed);
    let class = match status {
        429 => Some(2),
        400..=499 => Some(1),
        500..=599 => Some(3),
        _ => None,
    };
    if let Some(i) = class {
        AMAZON_ANSWERS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Installs the JSON log subscriber once. Level from `RUST_LOG` (default `info`): a level, or
/// `target=level` pairs (`info,adsync=debug`). Parsed as [`Targets`], not `EnvFilter`, whose
/// regular-expression engine would cost binary size and cold start for span-field filters
/// nobody sets; a malformed value falls back to `info`.
pub fn init_tracing() {
    use tracing_subscriber::prelude::*;
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_target(false)
        .without_time();
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::registry()
        .with(json.with_filter(filter))
        .try_init();
}

/// The `RUST_LOG` filter; unset, empty or malformed is `info`.
fn log_filter(value: Option<&str>) -> Targets {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// A CloudWatch embedded-metric-format record: one JSON log line that CloudWatch turns into
/// metrics under the `adsync` namespace.
#[derive(Debug, Default)]
pub struct Metrics {
    dimensions: BTreeMap<String, String>,
    values: BTreeMap<String, (f64, &'static str)>,
}

impl Metrics {
    pub fn new(function: &str) -> Self {
        let mut m = Self::default();
        m.dimensions.insert("Function".into(), function.into());
        m
    }

    /// Adds to a count metric.
    pub fn count(&mut self, name: &str, n: u64) -> &mut Self {
        let e = self
            .values
            .entry(name.to_string())
            .or_insert((0.0, "Count"));
        e.0 += n as f64;
        self
    }

    /// Records a duration in milliseconds (the last value wins).
    pub fn millis(&mut self, name: &str, ms: f64) -> &mut Self {
        self.values.insert(name.to_string(), (ms, "Milliseconds"));
        self
    }

    /// The EMF JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp_millis();
        let dims: Vec<&String> = self.dimensions.keys().collect();
        let metrics: Vec<serde_json::Value> = self
            .values
            .iter()
            .map(|(k, (_, unit))| serde_json::json!({"Name": k, "Unit": unit}))
            .collect();
        let mut doc = serde_json::json!({
            "_aws": {
                "Timestamp": now,
                "CloudWatchMetrics": [{"Namespace": "adsync", "Dimensions": [dims], "Metrics": metrics}]
            }
        });
        let obj = doc.as_object_mut().expect("object");
        for (k, v) in &self.dimensions {
            obj.insert(k.clone(), v.clone().into());
        }
        for (k, (v, _)) in &self.values {
            obj.insert(k.clone(), serde_json::json!(v));
        }
        doc
    }

    /// Adds (and resets) the process's Amazon answer counts.
    pub fn take_amazon_answers(&mut self) -> &mut Self {
        for (i, name) in AMAZON_METRICS.iter().enumerate() {
            let n = AMAZON_ANSWERS[i].swap(0, Ordering::Relaxed);
            if n > 0 || i == 0 && !self.values.is_empty() {
                self.count(name, n);
            }
        }
        self
    }

    /// Prints the record as one line on stdout, where Lambda ships it to CloudWatch, with the
    /// Amazon answer counts since the previous record.
    pub fn emit(&mut self) {
        self.take_amazon_answers();
        if !self.values.is_empty() {
            println!("{}", self.to_json());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_and_a_bad_value_means_info() {
        use tracing::Level;
        let info = log_filter(None);
        assert!(info.would_enable("adsync::ingest", &Level::INFO));
        assert!(!info.would_enable("adsync::ingest", &Level::DEBUG));
        for bad in ["", "  ", "adsync=loud"] {
            let f = log_filter(Some(bad));
            assert!(f.would_enable("x", &Level::INFO), "{bad:?}");
            assert!(!f.would_enable("x", &Level::DEBUG), "{bad:?}");
        }
        let f = log_filter(Some("warn,adsync::store=debug"));
        assert!(f.would_enable("adsync::store::dedupe", &Level::DEBUG));
        assert!(!f.would_enable("adsync::ingest", &Level::INFO));
        assert!(f.would_enable("hyper", &Level::WARN));
    }

    #[test]
    fn amazon_answers_are_counted_by_class_and_drained() {
        for s in [200, 207, 400, 401, 429, 500, 503] {
            record_amazon_status(s);
        }
        let mut m = Metrics::new("segment-export");
        m.take_amazon_answers();
        let doc = m.to_json();
        // Other tests in this process may record too: at least ours are there.
        assert!(doc["AmazonRequests"].as_f64().unwrap() >= 7.0, "{doc}");
        assert!(doc["Amazon4xx"].as_f64().unwrap() >= 2.0, "{doc}");
        assert!(doc["Amazon429"].as_f64().unwrap() >= 1.0, "{doc}");
        assert!(doc["Amazon5xx"].as_f64().unwrap() >= 2.0, "{doc}");
    }

    #[test]
    fn emf_document_names_every_metric() {
        let mut m = Metrics::new("conversion-ingest");
        m.count("Received", 3)
            .count("Received", 2)
            .millis("AmazonLatency", 12.5);
        let doc = m.to_json();
        assert_eq!(doc["Received"], 5.0);
        assert_eq!(doc["AmazonLatency"], 12.5);
        assert_eq!(doc["Function"], "conversion-ingest");
        let names: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["AmazonLatency", "Received"]);
    }
}
