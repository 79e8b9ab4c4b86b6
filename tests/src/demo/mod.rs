//! The demo driver's framework: what `cargo run -p adsync-tests --bin demo` runs against the local
//! stack once `infra/scripts/demo.sh` has started it and `cargo lambda watch`.
//!
//! A step is a module here with `pub async fn run(demo: &mut Demo) -> Result<(), String>` that
//! prints what happened (through [`Demo::ok`] / [`Demo::info`]) and returns an error saying what
//! went wrong. Steps run in the order of the [`steps!`] list below; each feature adds its module
//! and one line to that list. Steps may hand values to later ones with [`Demo::remember`].

use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

/// The future a step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// One registered step.
pub struct Step {
    pub name: &'static str,
    pub run: for<'a> fn(&'a mut Demo) -> StepFuture<'a>,
}

/// Declares the step modules and registers them, in order.
macro_rules! steps {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name;)*

        mod runners {
            $(
                pub fn $name<'a>(demo: &'a mut super::Demo) -> super::StepFuture<'a> {
                    Box::pin(super::$name::run(demo))
                }
            )*
        }

        /// Every step, in the order it runs.
        pub fn steps() -> Vec<Step> {
            vec![$(Step { name: stringify!($name), run: runners::$name }),*]
        }
    };
}

// One line per step, in order.
steps! {
    foundation,
    linking,
    conversions,
    segments,
    audiences,
    privacy,
}

/// The three function binaries, as `cargo lambda watch` serves them.
pub const FUNCTIONS: [&str; 3] = ["oauth-callback", "segment-export", "conversion-ingest"];

/// What a step gets: where everything is, an HTTP client, and notes from earlier steps.
pub struct Demo {
    pub http: reqwest::Client,
    /// `${FUNCTIONS_URL}`, e.g. `http://127.0.0.1:9000/lambda-url` (no trailing slash).
    pub functions_url: String,
    /// The Amazon sandbox (`AMAZON_ADS_API_URL`).
    pub amazon_url: String,
    pub api_key: String,
    notes: BTreeMap<String, Value>,
    checks: u32,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of the JSON error shape, if any.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    /// The body trimmed to a length that fits a line of output.
    pub fn short_body(&self) -> String {
        let b = self.body.trim();
        if b.chars().count() > 300 {
            format!("{}…", b.chars().take(300).collect::<String>())
        } else {
            b.to_string()
        }
    }
}

impl Demo {
    /// Reads the stack environment (`FUNCTIONS_URL`, `ADSYNC_API_KEY`, `AMAZON_ADS_API_URL`).
    /// When `FUNCTIONS_URL` is unset, `.local/stack.env` of the workspace is loaded first, so the
    /// driver also runs by hand next to a `stack-up.sh` + `cargo lambda watch`.
    pub fn from_env() -> Result<Self, String> {
        if std::env::var_os("FUNCTIONS_URL").is_none() {
            let env_file = workspace_root().join(".local/stack.env");
            load_env_file(&env_file)?;
        }
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "environment variable {name} is missing: start the stack with \
                         infra/scripts/stack-up.sh and load .local/stack.env (or run infra/scripts/demo.sh)"
                    )
                })
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            http,
            functions_url: var("FUNCTIONS_URL")?.trim_end_matches('/').to_string(),
            amazon_url: var("AMAZON_ADS_API_URL")?.trim_end_matches('/').to_string(),
            api_key: var("ADSYNC_API_KEY")?,
            notes: BTreeMap::new(),
            checks: 0,
        })
    }

    /// The URL of `path` (starting with `/`) on a function.
    pub fn url(&self, function: &str, path: &str) -> String {
        format!("{}/{function}{path}", self.functions_url)
    }

    /// Sends a request to a function. `auth`: send the demo's API key as a bearer token.
    pub async fn call(
        &self,
        method: reqwest::Method,
        function: &str,
        path: &str,
        auth: bool,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let mut req = self.http.request(method.clone(), self.url(function, path));
        if auth {
            req = req.bearer_auth(&self.api_key);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req, &format!("{method} {function}{path}")).await
    }

    /// Sends any request and reads the whole response; `what` names it in errors.
    pub async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Reply, String> {
        let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("{what}: reading the body: {e}"))?;
        Ok(Reply { status, body })
    }

    /// Stores a value for later steps (e.g. the linked account id).
    pub fn remember(&mut self, key: &str, value: Value) {
        self.notes.insert(key.to_string(), value);
    }

    /// A value an earlier step stored.
    pub fn recall(&self, key: &str) -> Option<&Value> {
        self.notes.get(key)
    }

    /// Prints a passed check.
    pub fn ok(&mut self, what: impl AsRef<str>) {
        self.checks += 1;
        println!("    \u{2713} {}", what.as_ref());
    }

    /// Prints a line of information.
    pub fn info(&self, what: impl AsRef<str>) {
        println!("      {}", what.as_ref());
    }

    /// How many checks passed so far.
    pub fn checks(&self) -> u32 {
        self.checks
    }
}

/// Fails unless the reply has the expected status, quoting the body.
pub fn expect_status(reply: &Reply, status: u16, what: &str) -> Result<(), String> {
    if reply.status == status {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected HTTP {status}, got {}: {}",
            reply.status,
            reply.short_body()
        ))
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Loads `export KEY=value` / `KEY=value` lines (the stack-up.sh format) into the process
/// environment; variables already set win.
pub fn load_env_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (start the stack with infra/scripts/stack-up.sh, or run infra/scripts/demo.sh)",
            path.display()
        )
    })?;
    for (key, value) in parse_env(&text) {
        if std::env::var_os(&key).is_none() {
            // SAFETY: called from `main` before the runtime starts any other thread.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}

/// Parses the stack env file format: comments, blank lines, optional `export `, unquoted values.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stack_env_format() {
        let text = "# comment\nexport A=1\n\nB=http://x:1/y?z=2\n  export C=\nnot a line\n";
        assert_eq!(
            parse_env(text),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "http://x:1/y?z=2".to_string()),
                ("C".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn steps_start_with_the_foundation() {
        let names: Vec<_> = steps().iter().map(|s| s.name).collect();
        assert_eq!(names.first(), Some(&"foundation"));
    }
}
