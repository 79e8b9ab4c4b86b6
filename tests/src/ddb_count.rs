//! A counting HTTP proxy for the AWS JSON protocols (DynamoDB, Secrets Manager, SQS, KMS): put
//! in front of DynamoDB Local or moto (`AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL` of the
//! process under test), it forwards every request unchanged and tallies, per operation (the
//! `X-Amz-Target` header: `DynamoDB_20120810.PutItem` → `PutItem`) and table, the calls, the items a batch
//! carries (`TransactWriteItems`, `BatchWriteItem`, `BatchGetItem`, `SendMessageBatch`), the
//! strongly consistent reads, and the error types answered (`ConditionalCheckFailedException`,
//! `TransactionCanceledException` with its `ConditionalCheckFailed` reasons).
//!
//! Used only in a separate counting pass of a benchmark: the extra hop distorts timing.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What one operation was asked to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpCount {
    pub calls: u64,
    /// Items written or read by batch calls (`TransactItems`, `RequestItems`, `Entries`); for
    /// single-item calls, the calls.
    pub items: u64,
    /// Calls with `"ConsistentRead": true`.
    pub consistent: u64,
    /// Error type (after `#`) → answers.
    pub errors: BTreeMap<String, u64>,
    /// `ConditionalCheckFailed` cancellation reasons inside cancelled transactions.
    pub cancelled_items: u64,
    /// Largest request body, bytes.
    pub max_body: usize,
}

/// `Operation table` (or the operation alone) → counts.
pub type Tally = BTreeMap<String, OpCount>;

/// A running proxy and its tally.
pub struct CountingProxy {
    pub url: String,
    tally: Arc<Mutex<Tally>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    tally: Arc<Mutex<Tally>>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let tally = Arc::new(Mutex::new(Tally::new()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("proxy HTTP client"),
            tally: tally.clone(),
        };
        let app = Router::new()
            .fallback(forward)
            .layer(DefaultBodyLimit::disable())
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the counting proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, tally }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Forgets the counts so far.
    pub fn reset(&self) {
        self.tally.lock().unwrap().clear();
    }
}

/// `b - a` per operation (calls, items, consistent reads, errors).
pub fn diff(a: &Tally, b: &Tally) -> Tally {
    let mut out = Tally::new();
    for (op, nb) in b {
        let na = a.get(op).cloned().unwrap_or_default();
        let mut errors = BTreeMap::new();
        for (e, n) in &nb.errors {
            let d = n - na.errors.get(e).copied().unwrap_or(0);
            if d > 0 {
                errors.insert(e.clone(), d);
            }
        }
        let d = OpCount {
            calls: nb.calls - na.calls,
            items: nb.items - na.items,
            consistent: nb.consistent - na.consistent,
            errors,
            cancelled_items: nb.cancelled_items - na.cancelled_items,
            max_body: nb.max_body,
        };
        if d.calls > 0 {
            out.insert(op.clone(), d);
        }
    }
    out
}

/// One line per operation: `PutItem 500 calls (errors: ConditionalCheckFailedException 12)`.
pub fn describe(t: &Tally) -> Vec<String> {
    t.iter()
        .map(|(op, c)| {
            let mut line = format!("{op}: {} calls", c.calls);
            if c.items != c.calls {
                line.push_str(&format!(", {} items", c.items));
            }
            if c.consistent > 0 {
                line.push_str(&format!(", {} strongly consistent", c.consistent));
            }
            if !c.errors.is_empty() {
                let e: Vec<String> = c.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
                line.push_str(&format!(", errors: {}", e.join(", ")));
            }
            if c.cancelled_items > 0 {
                line.push_str(&format!(
                    ", {} items cancelled by their condition",
                    c.cancelled_items
                ));
            }
            line.push_str(&format!(", largest body {} B", c.max_body));
            line
        })
        .collect()
}

/// Items a call carries: batch entries, or 1.
fn items_of(op: &str, body: &Value) -> u64 {
    let count_map = |field: &str, inner: Option<&str>| -> u64 {
        body.get(field)
            .and_then(Value::as_object)
            .map(|m| {
                m.values()
                    .map(|v| {
                        inner
                            .map_or(Some(v), |f| v.get(f))
                            .and_then(Value::as_array)
                            .map_or(0, |a| a.len() as u64)
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    let len = |field: &str| {
        body.get(field)
            .and_then(Value::as_array)
            .map_or(0, |a| a.len() as u64)
    };
    match op {
        "TransactWriteItems" | "TransactGetItems" => len("TransactItems"),
        "BatchWriteItem" => count_map("RequestItems", None),
        "BatchGetItem" => count_map("RequestItems", Some("Keys")),
        "SendMessageBatch" | "DeleteMessageBatch" | "ChangeMessageVisibilityBatch" => {
            len("Entries")
        }
        _ => 1,
    }
}

/// The table a DynamoDB call works on (`TableName`, the first of `RequestItems`, or of
/// `TransactItems`), when it names one.
fn table_of(body: &Value) -> Option<String> {
    if let Some(t) = body.get("TableName").and_then(Value::as_str) {
        return Some(t.to_string());
    }
    if let Some(m) = body.get("RequestItems").and_then(Value::as_object) {
        return m.keys().next().cloned();
    }
    body.get("TransactItems")
        .and_then(|a| a.get(0))
        .and_then(Value::as_object)
        .and_then(|o| o.values().next())
        .and_then(|v| v.get("TableName"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn record(tally: &Mutex<Tally>, op: &str, req: &[u8], status: StatusCode, resp: &[u8]) {
    let body: Value = serde_json::from_slice(req).unwrap_or(Value::Null);
    let label = match table_of(&body) {
        Some(table) => format!("{op} {table}"),
        None => op.to_string(),
    };
    let mut t = tally.lock().unwrap();
    let c = t.entry(label).or_default();
    c.calls += 1;
    c.items += items_of(op, &body);
    c.max_body = c.max_body.max(req.len());
    if body.get("ConsistentRead") == Some(&Value::Bool(true)) {
        c.consistent += 1;
    }
    if status.is_client_error() || status.is_server_error() {
        let answer: Value = serde_json::from_slice(resp).unwrap_or(Value::Null);
        let kind = answer
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        *c.errors.entry(kind).or_default() += 1;
        if let Some(reasons) = answer.get("CancellationReasons").and_then(Value::as_array) {
            c.cancelled_items += reasons
                .iter()
                .filter(|r| r.get("Code").and_then(Value::as_str) == Some("ConditionalCheckFailed"))
                .count() as u64;
        }
    }
}

async fn forward(
    State(s): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| format!("{method} {}", uri.path()));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = s.http.request(method, format!("{}{path}", s.upstream));
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let answer = match req.body(body.clone()).send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    };
    let status = answer.status();
    let mut out_headers = HeaderMap::new();
    for (k, v) in answer.headers() {
        if k != "content-length" && k != "transfer-encoding" && k != "connection" {
            out_headers.append(k.clone(), v.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    record(&s.tally, &op, &body, status, &bytes);
    (status, out_headers, bytes).into_response()
}
