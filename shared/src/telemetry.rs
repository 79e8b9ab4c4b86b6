//! Logging and metrics.
//!
//! Logs are JSON lines on stdout (CloudWatch picks them up). Nothing logged may contain a token,
//! code, secret or raw personal data: log ids, counts and hashes only.

use std::collections::BTreeMap;
use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber once. Level from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .try_init();
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

    /// Prints the record as one line on stdout, where Lambda ships it to CloudWatch.
    pub fn emit(&self) {
        if !self.values.is_empty() {
            println!("{}", self.to_json());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
