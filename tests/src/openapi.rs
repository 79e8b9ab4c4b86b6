//! `openapi.yaml` as a test oracle: which routes the HTTP API documents, and whether a response
//! the functions gave matches the documented status, content type and body schema.
//!
//! The spec is OpenAPI 3.1, so every schema in it is JSON Schema 2020-12 and is checked with the
//! `jsonschema` crate as is. Local `$ref`s (`#/components/...`) are resolved by validating
//! against a small root document that carries the spec's `components`.
//!
//! Integration tests call [`assert_response_valid`] (or [`assert_apigw_response_valid`] for a raw
//! `adsync::runtime::dispatch` answer) on every response they receive.

use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The HTTP methods OpenAPI path items may hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The repository root (the workspace holding `openapi.yaml` and `template.yaml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Reads a YAML file into JSON values. CloudFormation short tags (`!Ref`, `!Sub`, …) become
/// `{"!Ref": value}` objects, so `template.yaml` can be read too.
pub fn read_yaml(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let yaml: serde_norway::Value = serde_norway::from_str(&text)
        .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    yaml_to_json(yaml).map_err(|e| format!("{}: {e}", path.display()))
}

fn yaml_to_json(v: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(f64::NAN))
                    .map(Value::Number)
                    .ok_or_else(|| format!("number {n} has no JSON form"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    // Response codes such as `200` may be written unquoted.
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let tag = if tag.starts_with('!') {
                tag
            } else {
                format!("!{tag}")
            };
            serde_json::json!({ tag: yaml_to_json(t.value)? })
        }
    })
}

/// The loaded spec with compiled validators cached per (operation, status, media type).
pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The spec, loaded once per test binary. Panics with a clear message when it is missing or
/// malformed (a broken spec must fail the tests, never skip them).
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| Spec::load().unwrap_or_else(|e| panic!("openapi.yaml: {e}")))
}

impl Spec {
    /// Loads `openapi.yaml` from the repository root.
    pub fn load() -> Result<Self, String> {
        Self::from_value(read_yaml(&workspace_root().join("openapi.yaml"))?)
    }

    /// Wraps an already parsed spec (tests of this module use small inline specs).
    pub fn from_value(doc: Value) -> Result<Self, String> {
        let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
        if !version.starts_with("3.1") {
            // 3.0 schemas are not JSON Schema (`nullable`, …); validating them as such would lie.
            return Err(format!("expected OpenAPI 3.1.x, found {version:?}"));
        }
        if !doc.get("paths").is_some_and(Value::is_object) {
            return Err("no `paths` object".into());
        }
        Ok(Self {
            doc,
            validators: Mutex::new(HashMap::new()),
        })
    }

    /// The parsed document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Every documented route as (`METHOD`, path template), sorted.
    pub fn routes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.push((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        out.sort();
        out
    }

    /// The operation object of `method` + `path_template`.
    pub fn operation(&self, method: &str, path_template: &str) -> Option<&Value> {
        self.doc["paths"]
            .get(path_template)?
            .get(method.to_ascii_lowercase())
    }

    /// Whether the operation needs the API key (its own `security`, else the document's).
    pub fn requires_api_key(&self, method: &str, path_template: &str) -> Option<bool> {
        let op = self.operation(method, path_template)?;
        let sec = op.get("security").or_else(|| self.doc.get("security"));
        Some(sec.and_then(Value::as_array).is_some_and(|reqs| {
            reqs.iter()
                .any(|r| r.as_object().is_some_and(|o| o.contains_key("apiKey")))
        }))
    }

    /// The path template documenting `path`: `path` itself when it is a template of the spec,
    /// else the template whose segments match (`{param}` matches one non-empty segment; the
    /// template with the most literal segments wins). A `/lambda-url/<function>` prefix (what
    /// `cargo lambda watch` serves) and a query string are ignored.
    pub fn resolve_path(&self, method: &str, path: &str) -> Option<String> {
        let path = strip_local_prefix(path.split('?').next().unwrap_or(""));
        if self.operation(method, path).is_some() {
            return Some(path.to_string());
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut best: Option<(usize, String)> = None;
        for (m, template) in self.routes() {
            if !m.eq_ignore_ascii_case(method) {
                continue;
            }
            let tsegs: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut literal = 0;
            let matches = tsegs.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if matches && best.as_ref().is_none_or(|(n, _)| literal > *n) {
                best = Some((literal, template));
            }
        }
        best.map(|(_, t)| t)
    }

    /// Checks one response against the spec. `content_type` is the header value (parameters such
    /// as `; charset=utf-8` are ignored); `body` is the raw body.
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<(), String> {
        let template = self
            .resolve_path(method, path)
            .ok_or_else(|| format!("{method} {path} is not documented in openapi.yaml"))?;
        let op = self.operation(method, &template).expect("resolved");
        let responses = op
            .get("responses")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{method} {template} documents no responses"))?;
        let class = format!("{}XX", status / 100);
        let (key, response) = [status.to_string(), class, "default".to_string()]
            .into_iter()
            .find_map(|k| responses.get(&k).map(|r| (k, r)))
            .ok_or_else(|| {
                format!(
                    "{method} {template} answered {status}, which openapi.yaml does not document (documented: {})",
                    responses.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        let response = self.deref(response)?;
        let where_ = format!("{method} {template} → {status}");
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{where_}: the spec documents no body, got {} bytes",
                    body.len()
                ))
            };
        };
        let media = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .ok_or_else(|| format!("{where_}: the response has no Content-Type"))?;
        let media_obj = content.get(&media).ok_or_else(|| {
            format!(
                "{where_}: Content-Type {media} is not documented (documented: {})",
                content.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let Some(schema) = media_obj.get("schema") else {
            return Ok(());
        };
        let instance = if media == "application/json" || media.ends_with("+json") {
            serde_json::from_str::<Value>(body)
                .map_err(|e| format!("{where_}: the body is not JSON ({e}): {}", snippet(body)))?
        } else {
            if media == "text/html" && body.trim().is_empty() {
                return Err(format!("{where_}: empty HTML page"));
            }
            Value::String(body.to_string())
        };
        let validator = self.validator(&format!("{method} {template} {key} {media}"), schema)?;
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .take(10)
            .map(|e| format!("  at {}: {}", e.instance_path(), e))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{where_}: the body does not match the spec:\n{}\nbody: {}",
                errors.join("\n"),
                snippet(body)
            ))
        }
    }

    /// Checks a request body against the operation's `requestBody` (content type documented,
    /// JSON bodies against their schema, form bodies as an object of strings).
    pub fn validate_request_body(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let template = self
            .resolve_path(method, path)
            .ok_or_else(|| format!("{method} {path} is not documented in openapi.yaml"))?;
        let op = self.operation(method, &template).expect("resolved");
        let where_ = format!("{method} {template} request");
        let Some(rb) = op.get("requestBody") else {
            return if body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{where_}: the spec documents no body, got {} bytes",
                    body.len()
                ))
            };
        };
        let rb = self.deref(rb)?;
        if body.is_empty() {
            return if rb["required"] == true {
                Err(format!("{where_}: a body is required"))
            } else {
                Ok(())
            };
        }
        let media = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .ok_or_else(|| format!("{where_}: no Content-Type"))?;
        let schema = rb["content"]
            .get(&media)
            .ok_or_else(|| format!("{where_}: Content-Type {media} is not documented"))?
            .get("schema")
            .cloned()
            .unwrap_or(Value::Bool(true));
        let text =
            std::str::from_utf8(body).map_err(|e| format!("{where_}: body is not UTF-8: {e}"))?;
        let instance = if media == "application/x-www-form-urlencoded" {
            Value::Object(
                url::form_urlencoded::parse(body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            )
        } else {
            serde_json::from_str(text).map_err(|e| format!("{where_}: not JSON: {e}"))?
        };
        let validator = self.validator(&format!("{method} {template} request {media}"), &schema)?;
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .take(10)
            .map(|e| format!("  at {}: {}", e.instance_path(), e))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{where_}: the body does not match the spec:\n{}",
                errors.join("\n")
            ))
        }
    }

    /// Checks the response headers the spec marks `required` for this status (presence and
    /// schema, e.g. the `Location` of a redirect). Header names compare case-insensitively.
    pub fn validate_headers<'a>(
        &self,
        method: &str,
        path: &str,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        let headers: Vec<(String, &str)> = headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let template = self
            .resolve_path(method, path)
            .ok_or_else(|| format!("{method} {path} is not documented in openapi.yaml"))?;
        let op = self.operation(method, &template).expect("resolved");
        let Some(response) = op["responses"].get(status.to_string()) else {
            return Ok(()); // validate_response reports undocumented statuses
        };
        let response = self.deref(response)?;
        for (name, spec) in response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let spec = self.deref(spec)?;
            let found = headers
                .iter()
                .find(|(k, _)| *k == name.to_ascii_lowercase())
                .map(|(_, v)| *v);
            match found {
                None if spec["required"] == true => {
                    return Err(format!(
                        "{method} {template} → {status}: header {name} is required"
                    ));
                }
                None => {}
                Some(v) => {
                    if let Some(schema) = spec.get("schema") {
                        let key = format!("{method} {template} {status} header {name}");
                        let validator = self.validator(&key, schema)?;
                        let value = Value::String(v.to_string());
                        if let Some(e) = validator.iter_errors(&value).next() {
                            return Err(format!(
                                "{method} {template} → {status}: header {name}: {v:?}: {e}"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows a `#/components/...` reference (once; responses do not chain refs here).
    fn deref<'a>(&'a self, v: &'a Value) -> Result<&'a Value, String> {
        match v.get("$ref").and_then(Value::as_str) {
            None => Ok(v),
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| format!("only local references are supported, got {r}"))?;
                self.doc
                    .pointer(pointer)
                    .ok_or_else(|| format!("dangling reference {r}"))
            }
        }
    }

    fn validator(&self, key: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        if let Some(v) = self.validators.lock().expect("not poisoned").get(key) {
            return Ok(v.clone());
        }
        // The root carries the spec's components so `#/components/schemas/X` resolves.
        let root = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc.get("components").cloned().unwrap_or(Value::Null),
            "allOf": [schema],
        });
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| format!("the schema for {key} does not compile: {e}"))?;
        let v = Arc::new(v);
        self.validators
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), v.clone());
        Ok(v)
    }
}

fn strip_local_prefix(path: &str) -> &str {
    // `/lambda-url/<function>/rest` → `/rest`
    if let Some(rest) = path.strip_prefix("/lambda-url/") {
        return rest.find('/').map_or("/", |i| &rest[i..]);
    }
    path
}

fn snippet(body: &str) -> String {
    const MAX: usize = 600;
    if body.len() <= MAX {
        return body.to_string();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &body[..end], body.len())
}

/// Panics unless the response matches `openapi.yaml`: the status is documented for the route,
/// the content type is documented for that status, and the body validates against its schema.
/// `path` may be the template (`/accounts/{accountId}/conversions`) or a concrete path
/// (`/accounts/123/conversions`, also under `/lambda-url/<function>`).
pub fn assert_response_valid(
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
    body: &str,
) {
    let ct = (!content_type.is_empty()).then_some(content_type);
    if let Err(e) = spec().validate_response(method, path, status, ct, body) {
        panic!("response not valid against openapi.yaml: {e}");
    }
}

/// [`assert_response_valid`] for a transport-neutral `adsync::http::HttpResponse`.
/// Also checks the headers the spec requires (see [`Spec::validate_headers`]).
pub fn assert_http_response_valid(method: &str, path: &str, resp: &adsync::http::HttpResponse) {
    let ct = resp
        .headers
        .get("content-type")
        .map(String::as_str)
        .unwrap_or("");
    assert_response_valid(method, path, resp.status, ct, &resp.body);
    let headers = resp.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    if let Err(e) = spec().validate_headers(method, path, resp.status, headers) {
        panic!("response not valid against openapi.yaml: {e}");
    }
}

/// [`assert_response_valid`] for an API Gateway payload 2.0 response document (what
/// `adsync::runtime::dispatch` returns for an HTTP event). Also checks required headers.
pub fn assert_apigw_response_valid(method: &str, path: &str, resp: &Value) {
    let status = resp["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or_else(|| panic!("not an HTTP API response (no statusCode): {resp}"));
    let ct = resp["headers"]
        .as_object()
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .and_then(|(_, v)| v.as_str())
        })
        .unwrap_or("");
    let body = resp["body"].as_str().unwrap_or("");
    assert_response_valid(method, path, status, ct, body);
    let headers = resp["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)));
    if let Err(e) = spec().validate_headers(method, path, status, headers) {
        panic!("response not valid against openapi.yaml: {e}");
    }
}
