//! Golden answers of the API functions' error paths (`tests/tests/golden_errors.rs`): every case
//! is a request sent through the Lambda runtime's entry point (`adsync::runtime::dispatch_raw`,
//! an API Gateway payload 2.0 event with a base64 body, so a body that is not UTF-8 arrives as
//! such), and its answer is recorded as status, the headers that matter and the whole JSON body
//! (for an HTML page: its title, `<h1>` and text). Values that vary per run (account, segment,
//! destination and connection ids, timestamps) are replaced by placeholders before comparing.
//!
//! The recorded cases of one function live in `tests/golden/<function>.json`. By default a run
//! compares with them and fails with a readable diff naming each case that changed;
//! `GOLDEN_UPDATE=1` rewrites the file instead.

pub mod conversions;
pub mod export;
pub mod oauth;

use adsync::http::auth::{ApiKeyAuth, ApiKeyEntry, ApiKeysSecret};
use adsync::http::{HttpRequest, HttpResponse};
use adsync::runtime::{Handler, Invocation, dispatch_raw};
use adsync::store::secrets::SecretsStore;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// The headers whose values are recorded (the others only by name).
const RECORDED_HEADERS: [&str; 7] = [
    "content-type",
    "allow",
    "retry-after",
    "cache-control",
    "www-authenticate",
    "location",
    "content-security-policy",
];

/// JSON keys whose values vary per run (ids and times made by the code under test).
const VOLATILE_KEYS: [&str; 9] = [
    "createdAt",
    "updatedAt",
    "expiresAt",
    "requestedAt",
    "requestId",
    "deletionId",
    "connectionId",
    "authorizeUrl",
    "externalAudienceId",
];

/// The API keys of one test: one with every scope and no account restriction, one that may only
/// read, one restricted to an account nobody uses.
pub struct Keys {
    pub auth: ApiKeyAuth,
    pub admin: String,
    pub reader: String,
    pub restricted: String,
}

/// The account the `restricted` key may use.
pub const RESTRICTED_ACCOUNT: &str = "900000000000001";

impl Keys {
    /// Stores the keys' digests in a fresh secret in moto.
    pub async fn new(secrets: &SecretsStore) -> Self {
        let key = |n: &str| format!("golden-{n}-{}", uuid::Uuid::new_v4().simple());
        let (admin, reader, restricted) = (key("admin"), key("reader"), key("restricted"));
        let entry = |name: &str, k: &str, scopes: Option<Vec<String>>, accounts| ApiKeyEntry {
            name: name.into(),
            sha256: ApiKeyAuth::digest(k),
            scopes,
            accounts,
        };
        let secret = ApiKeysSecret {
            keys: vec![
                entry("admin", &admin, None, None),
                entry("reader", &reader, Some(vec!["read".into()]), None),
                entry(
                    "restricted",
                    &restricted,
                    None,
                    Some(vec![RESTRICTED_ACCOUNT.into()]),
                ),
            ],
        };
        let name = crate::stack::secret_name("golden-api-keys");
        secrets
            .put_json(&name, &secret)
            .await
            .expect("storing the golden API keys in moto");
        Keys {
            auth: ApiKeyAuth::new(secrets.clone(), name),
            admin,
            reader,
            restricted,
        }
    }
}

/// `req` with `Authorization: Bearer <key>`.
pub fn bearer(req: HttpRequest, key: &str) -> HttpRequest {
    req.with_header("authorization", &format!("Bearer {key}"))
}

/// `req` with a content type and a body.
pub fn body(req: HttpRequest, content_type: &str, body: impl Into<Vec<u8>>) -> HttpRequest {
    req.with_header("content-type", content_type)
        .with_body(body)
}

/// `req` with a JSON body.
pub fn json_body(req: HttpRequest, v: &Value) -> HttpRequest {
    body(
        req,
        "application/json",
        serde_json::to_vec(v).expect("JSON"),
    )
}

/// Sends `req` through the runtime's entry point as Lambda would (payload 2.0, base64 body) and
/// returns the answer (cookies of payload 2.0 as `set-cookie`).
pub async fn call<H: Handler>(h: &H, req: &HttpRequest) -> HttpResponse {
    let event = json!({
        "version": "2.0",
        "rawPath": req.path,
        "rawQueryString": req.raw_query,
        "headers": req.headers,
        "body": base64(&req.body),
        "isBase64Encoded": true,
        "requestContext": {
            "requestId": uuid::Uuid::new_v4().to_string(),
            "domainName": req.domain_name,
            "http": {"method": req.method, "path": req.path, "sourceIp": "127.0.0.1"},
        },
    });
    let raw = serde_json::value::to_raw_value(&event).expect("event JSON");
    let out = dispatch_raw(h, &raw, Invocation::with_timeout(60))
        .await
        .unwrap_or_else(|e| panic!("{} {}: the event failed: {e}", req.method, req.path));
    let mut r = HttpResponse::new(out["statusCode"].as_u64().expect("statusCode") as u16);
    for (k, v) in out["headers"].as_object().into_iter().flatten() {
        r.headers
            .insert(k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string());
    }
    if let Some(c) = out["cookies"].as_array().and_then(|c| c.first()) {
        r.headers
            .insert("set-cookie".into(), c.as_str().unwrap_or("").to_string());
    }
    r.body = out["body"].as_str().unwrap_or_default().to_string();
    r
}

/// Standard base64 with padding (the tests crate's library has no base64 dependency).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The recorded cases of one function.
pub struct Golden {
    file: &'static str,
    cases: Vec<Value>,
    names: BTreeSet<String>,
    /// (value, placeholder), longest value first when applied.
    subst: Vec<(String, String)>,
}

impl Golden {
    /// Cases to be compared with (or written to) `tests/golden/<file>`.
    pub fn new(file: &'static str) -> Self {
        Self {
            file,
            cases: Vec::new(),
            names: BTreeSet::new(),
            subst: Vec::new(),
        }
    }

    /// Replaces `value` by `placeholder` wherever it appears in a recorded case.
    pub fn redact(&mut self, value: impl Into<String>, placeholder: &str) {
        let value = value.into();
        if !value.is_empty() {
            self.subst.push((value, placeholder.to_string()));
            self.subst.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        }
    }

    fn scrub(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (v, p) in &self.subst {
            out = out.replace(v.as_str(), p);
        }
        out
    }

    /// Sends `req` to `h` and records the answer as case `name`.
    pub async fn case<H: Handler>(&mut self, h: &H, name: &str, req: HttpRequest) -> HttpResponse {
        let resp = call(h, &req).await;
        self.record(name, &req, &resp);
        resp
    }

    /// Records `resp` (the answer to `req`) as case `name`.
    pub fn record(&mut self, name: &str, req: &HttpRequest, resp: &HttpResponse) {
        assert!(
            self.names.insert(name.to_string()),
            "case {name} is recorded twice"
        );
        let mut headers = Map::new();
        for (k, v) in &resp.headers {
            let v = if RECORDED_HEADERS.contains(&k.as_str()) {
                json!(self.scrub(v))
            } else {
                json!("<present>")
            };
            headers.insert(k.clone(), v);
        }
        let query = if req.raw_query.is_empty() {
            String::new()
        } else {
            format!("?{}", req.raw_query)
        };
        let mut case = json!({
            "name": name,
            "request": self.scrub(&format!("{} {}{query}", req.method, req.path)),
            "status": resp.status,
            "headers": headers,
        });
        let ct = resp.header_value("content-type");
        if ct.starts_with("text/html") {
            case["html"] = html_summary(&self.scrub(&resp.body));
        } else {
            let body: Value = serde_json::from_str(&self.scrub(&resp.body))
                .unwrap_or_else(|_| json!({ "<text>": self.scrub(&resp.body) }));
            case["body"] = without_volatile(body);
        }
        self.cases.push(case);
    }

    /// How many cases were recorded.
    pub fn len(&self) -> usize {
        self.cases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }

    /// Compares the cases with the golden file (or rewrites it under `GOLDEN_UPDATE=1`).
    pub fn finish(self) {
        let path = format!("{}/golden/{}", env!("CARGO_MANIFEST_DIR"), self.file);
        let text = serde_json::to_string_pretty(&self.cases).expect("JSON") + "\n";
        if std::env::var("GOLDEN_UPDATE").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(format!("{}/golden", env!("CARGO_MANIFEST_DIR"))).unwrap();
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            eprintln!("golden: wrote {} cases to {path}", self.cases.len());
            return;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read {path} ({e}); run with GOLDEN_UPDATE=1 to create it")
        });
        let stored: Vec<Value> =
            serde_json::from_str(&stored).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
        let report = compare(&stored, &self.cases);
        assert!(
            report.is_empty(),
            "{} differs from today's answers ({path}; GOLDEN_UPDATE=1 rewrites it if the change \
             is intended):\n{report}",
            self.file
        );
    }
}

trait HeaderValue {
    fn header_value(&self, name: &str) -> &str;
}

impl HeaderValue for HttpResponse {
    fn header_value(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A JSON value with the volatile keys' values replaced by `"<redacted>"`.
fn without_volatile(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = if VOLATILE_KEYS.contains(&k.as_str()) && !v.is_null() {
                        json!("<redacted>")
                    } else {
                        without_volatile(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_volatile).collect()),
        other => other,
    }
}

/// An HTML page as `{title, h1, text}` (text: the body's visible text, whitespace collapsed).
fn html_summary(page: &str) -> Value {
    let between = |open: &str, close: &str| -> String {
        page.find(open)
            .and_then(|i| {
                let rest = &page[i..];
                let start = rest.find('>')? + 1;
                let end = rest.find(close)?;
                Some(strip_tags(&rest[start..end]))
            })
            .unwrap_or_default()
    };
    let body_start = page.find("<body").unwrap_or(0);
    let mut body = page[body_start..].to_string();
    while let (Some(a), Some(b)) = (body.find("<style"), body.find("</style>")) {
        if b < a {
            break;
        }
        body.replace_range(a..b + "</style>".len(), " ");
    }
    json!({
        "title": between("<title", "</title>"),
        "h1": between("<h1", "</h1>"),
        "text": strip_tags(&body),
    })
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The differences between stored and current cases, one block per case ("" when equal).
fn compare(stored: &[Value], current: &[Value]) -> String {
    let name = |c: &Value| c["name"].as_str().unwrap_or("?").to_string();
    let mut out = String::new();
    for c in current {
        match stored.iter().find(|s| name(s) == name(c)) {
            None => out += &format!("\n+++ new case {} (not in the golden file)\n", name(c)),
            Some(s) if s != c => {
                out += &format!("\n*** case {} changed (- golden, + now):\n", name(c));
                out += &line_diff(
                    &serde_json::to_string_pretty(s).unwrap(),
                    &serde_json::to_string_pretty(c).unwrap(),
                );
            }
            Some(_) => {}
        }
    }
    for s in stored {
        if !current.iter().any(|c| name(c) == name(s)) {
            out += &format!(
                "\n--- case {} is gone (it is in the golden file)\n",
                name(s)
            );
        }
    }
    out
}

/// A line diff (longest common subsequence): changed lines with `-`/`+`, two lines of context.
fn line_diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 3).min(ops.len());
        ops[lo..hi].iter().any(|(op, _)| *op != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if *op != ' ' || near(k) {
            out += &format!("  {op} {line}\n");
            skipped = false;
        } else if !skipped {
            out += "    …\n";
            skipped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_the_case_and_the_changed_lines() {
        let a = json!([{"name": "x", "status": 400, "body": {"error": {"code": "a"}}}]);
        let b = json!([{"name": "x", "status": 409, "body": {"error": {"code": "a"}}},
                       {"name": "y", "status": 200}]);
        let r = compare(a.as_array().unwrap(), b.as_array().unwrap());
        assert!(r.contains("case x changed"), "{r}");
        let line = |op: char, text: &str| {
            r.lines()
                .any(|l| l.trim_start().starts_with(op) && l.contains(text))
        };
        assert!(line('-', "\"status\": 400"), "{r}");
        assert!(line('+', "\"status\": 409"), "{r}");
        assert!(!line('-', "\"code\""), "unchanged lines are context: {r}");
        assert!(r.contains("new case y"), "{r}");
        assert!(compare(a.as_array().unwrap(), a.as_array().unwrap()).is_empty());
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\xff\xfe\x00"), "//4A");
    }

    #[test]
    fn html_pages_are_summarised() {
        let page = "<!doctype html><html><head><title>T &amp; U</title><style>p{x:1}</style></head>\
                    <body><main><h1 class=\"e\">Bad link</h1><p>What\n  happened.</p></main></body></html>";
        let s = html_summary(page);
        assert_eq!(s["title"], "T &amp; U");
        assert_eq!(s["h1"], "Bad link");
        assert_eq!(s["text"], "Bad link What happened.");
    }
}
