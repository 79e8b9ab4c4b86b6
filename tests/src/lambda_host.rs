//! A minimal Lambda Runtime API for benchmarks: runs a release function binary as a child process
//! (as Lambda runs `bootstrap`), hands it queued events on
//! `GET /2018-06-01/runtime/invocation/next` with the `Lambda-Runtime-*` headers (request id,
//! deadline, invoked function ARN, trace id) and takes its answers on
//! `POST /2018-06-01/runtime/invocation/{id}/response` and `.../error` (and a start-up failure
//! on `POST /2018-06-01/runtime/init/error`). One invocation at a time, as in Lambda.
//!
//! The protocol is the one `lambda_runtime` speaks (its `requests.rs` and `types.rs`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:";

/// What the function answered to one invocation.
#[derive(Debug)]
pub enum Answer {
    /// `POST .../response`: the handler's result (JSON text).
    Response(Vec<u8>),
    /// `POST .../error`: the handler failed.
    Error(Vec<u8>),
}

struct Queued {
    request_id: String,
    deadline_ms: u64,
    payload: Vec<u8>,
}

struct HostState {
    function: String,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    polled: watch::Sender<bool>,
    init_error: Mutex<Option<String>>,
}

/// The fake Runtime API (one per function process).
pub struct LambdaHost {
    addr: SocketAddr,
    state: Arc<HostState>,
    tx: mpsc::UnboundedSender<Queued>,
}

impl LambdaHost {
    /// Serves the Runtime API on a free loopback port for `function`.
    pub async fn start(function: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(HostState {
            function: function.to_string(),
            queue: tokio::sync::Mutex::new(rx),
            pending: Mutex::new(HashMap::new()),
            polled: watch::channel(false).0,
            init_error: Mutex::new(None),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Runtime API");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, tx }
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    /// Starts `binary` with the current environment, `extra` on top, and the Lambda variables
    /// (`memory_mb` as `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`). Its output goes to `log`.
    pub fn spawn(
        &self,
        binary: &std::path::Path,
        memory_mb: u32,
        extra: &[(String, String)],
        log: &std::path::Path,
    ) -> Child {
        let out = std::fs::File::create(log).expect("create the function's log file");
        let err = out.try_clone().expect("log file handle");
        Command::new(binary)
            .env("AWS_LAMBDA_RUNTIME_API", self.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.state.function)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))
    }

    /// Waits until the function polls for its first invocation (or reported an init error).
    pub async fn first_poll(&self, within: Duration) -> Result<(), String> {
        let mut polled = self.state.polled.subscribe();
        let waited = tokio::time::timeout(within, polled.wait_for(|p| *p)).await;
        match (self.init_failure(), waited) {
            (Some(e), _) => Err(format!("init error: {e}")),
            (None, Ok(_)) => Ok(()),
            (None, Err(_)) => Err(format!("no poll within {within:?}")),
        }
    }

    fn init_failure(&self) -> Option<String> {
        self.state.init_error.lock().unwrap().clone()
    }

    /// Queues one event with a deadline `timeout` from now and waits for the answer.
    pub async fn invoke(&self, payload: Vec<u8>, timeout: Duration) -> Result<Answer, String> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (done, answer) = oneshot::channel();
        self.state
            .pending
            .lock()
            .unwrap()
            .insert(request_id.clone(), done);
        let deadline_ms = adsync::runtime::now_ms() + timeout.as_millis() as u64;
        self.tx
            .send(Queued {
                request_id,
                deadline_ms,
                payload,
            })
            .map_err(|_| "the Runtime API is gone".to_string())?;
        match tokio::time::timeout(timeout + Duration::from_secs(5), answer).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("the invocation was dropped".into()),
            Err(_) => Err(self
                .init_failure()
                .unwrap_or_else(|| format!("no answer within {timeout:?}"))),
        }
    }
}

/// An API Gateway HTTP API (payload 2.0) event for `POST path` with a JSON body, arriving now.
pub fn apigw_post(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let now = adsync::runtime::now_ms();
    serde_json::to_vec(&json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "body": body,
        "isBase64Encoded": false,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.execute-api.us-east-1.amazonaws.com",
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "",
            "timeEpoch": now,
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "ingest_bench"}
        }
    }))
    .expect("event JSON")
}

/// Peak resident set (`VmHWM`) and current resident set (`VmRSS`) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

async fn next(State(s): State<Arc<HostState>>) -> (HeaderMap, Bytes) {
    s.polled.send_replace(true);
    let q = {
        let mut rx = s.queue.lock().await;
        rx.recv().await
    };
    let Some(q) = q else {
        // The host is shutting down: hold the poll until the process is killed.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut h = HeaderMap::new();
    let v = |s: &str| HeaderValue::from_str(s).expect("header value");
    h.insert("lambda-runtime-aws-request-id", v(&q.request_id));
    h.insert("lambda-runtime-deadline-ms", v(&q.deadline_ms.to_string()));
    h.insert(
        "lambda-runtime-invoked-function-arn",
        v(&format!("{ARN}{}", s.function)),
    );
    h.insert(
        "lambda-runtime-trace-id",
        v("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    h.insert("content-type", v("application/json"));
    (h, Bytes::from(q.payload))
}

fn settle(s: &HostState, id: &str, a: Answer) -> StatusCode {
    match s.pending.lock().unwrap().remove(id) {
        Some(done) => {
            let _ = done.send(a);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State(s): State<Arc<HostState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    settle(&s, &id, Answer::Response(body.to_vec()))
}

async fn error(State(s): State<Arc<HostState>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    settle(&s, &id, Answer::Error(body.to_vec()))
}

async fn init_error(State(s): State<Arc<HostState>>, body: Bytes) -> StatusCode {
    *s.init_error.lock().unwrap() = Some(String::from_utf8_lossy(&body).into_owned());
    s.polled.send_replace(true);
    StatusCode::ACCEPTED
}
