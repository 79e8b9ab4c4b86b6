//! The console's pages: askama templates (`shared/templates/console/`), the two static assets
//! (a stylesheet and the progress script, served by the console itself) and the headers every
//! answer carries: `Cache-Control: no-store` and a CSP that allows only the console's own script,
//! stylesheet and fetches (no inline script or style, no `unsafe-*`), no framing.

use super::api::ApiError;
use crate::http::HttpResponse;
use askama::Template;
use std::collections::BTreeMap;

pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/progress.js");

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn secure(mut r: HttpResponse) -> HttpResponse {
    for (k, v) in [
        ("content-security-policy", CSP),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ] {
        r.headers.insert(k.into(), v.into());
    }
    r
}

/// A static asset.
pub fn asset(content_type: &str, body: &str) -> HttpResponse {
    let mut r = HttpResponse::new(200);
    r.headers.insert(
        "content-type".into(),
        format!("{content_type}; charset=utf-8"),
    );
    r.body = body.to_string();
    secure(r)
}

/// `303 See Other`.
pub fn see_other(location: &str) -> HttpResponse {
    let mut r = HttpResponse::new(303);
    r.headers.insert("location".into(), location.into());
    secure(r)
}

/// A JSON answer with the console's headers.
pub fn json(status: u16, v: &serde_json::Value) -> HttpResponse {
    secure(HttpResponse::json(status, v))
}

/// Renders a page; a rendering failure (a bug) is a plain 500 page, never a panic.
pub fn render<T: Template>(status: u16, page: &T) -> HttpResponse {
    let mut r = HttpResponse::new(status);
    r.headers
        .insert("content-type".into(), "text/html; charset=utf-8".into());
    r.body = page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "console page rendering failed");
        r.status = 500;
        "<!doctype html><title>adsync</title><h1>Something went wrong</h1>".into()
    });
    secure(r)
}

/// What every signed-in page shows: where the console lives, the CSRF token, who signed in.
#[derive(Clone, Debug, Default)]
pub struct Chrome {
    pub base: String,
    pub csrf: String,
    pub key_name: String,
}

/// A banner over the page.
#[derive(Clone, Debug)]
pub struct Notice {
    /// `ok`, `warn` or `error`.
    pub tone: &'static str,
    pub text: String,
}

impl Notice {
    pub fn ok(text: impl Into<String>) -> Option<Notice> {
        Some(Notice {
            tone: "ok",
            text: text.into(),
        })
    }
    pub fn error(text: impl Into<String>) -> Option<Notice> {
        Some(Notice {
            tone: "error",
            text: text.into(),
        })
    }
}

/// An API error shown on a form: the banner and the message next to its field.
#[derive(Clone, Debug, Default)]
pub struct Errors {
    pub by_field: BTreeMap<String, String>,
}

impl Errors {
    /// The banner and field errors of a refused request.
    pub fn from_api(e: &ApiError) -> (Option<Notice>, Errors) {
        let mut errors = Errors::default();
        let text = match &e.field {
            Some(f) => {
                errors.by_field.insert(f.clone(), e.message.clone());
                format!("Not saved: {} (field {f}).", e.message)
            }
            None => format!("Not saved: {}", e.message),
        };
        (Notice::error(text), errors)
    }

    /// The message for form field `name`: an error on it or inside it (`name[0]`, `name.x`).
    pub fn at(&self, name: &str) -> Option<&str> {
        self.by_field.iter().find_map(|(f, m)| {
            let inside = f
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['[', '.']));
            inside.then_some(m.as_str())
        })
    }
}

/// A page with a title and a message (errors, refusals).
#[derive(Template)]
#[template(path = "console/notice.html")]
pub struct NoticePage<'a> {
    pub base: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    pub tone: &'a str,
}

pub fn notice_page(base: &str, status: u16, title: &str, text: &str) -> HttpResponse {
    let tone = if status < 400 { "ok" } else { "error" };
    render(
        status,
        &NoticePage {
            base,
            title,
            text,
            tone,
        },
    )
}

/// A progress bar's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bar {
    pub percent: u64,
    pub label: String,
}

/// The backfill (or refresh / purge) progress of a mapping of `GET /destinations/{id}`.
pub fn bar(mapping: &serde_json::Value) -> Bar {
    let b = &mapping["backfill"];
    let state = b["state"].as_str().unwrap_or("none");
    let purpose = b["purpose"].as_str().unwrap_or("backfill");
    let sent = b["devicesSent"].as_u64().unwrap_or(0);
    let (shards, done) = (
        b["shards"].as_u64().unwrap_or(0),
        b["shardsDone"].as_u64().unwrap_or(0),
    );
    match (mapping["status"].as_str(), state) {
        (Some("pending"), _) => Bar {
            percent: 0,
            label: "waiting for the audience".into(),
        },
        (_, "done") => Bar {
            percent: 100,
            label: format!("{purpose} done: {sent} devices sent"),
        },
        (_, "failed") => Bar {
            percent: 0,
            label: format!(
                "{purpose} failed: {}",
                b["lastError"].as_str().unwrap_or("see the errors")
            ),
        },
        (_, "running") => {
            let p = (done * 100).checked_div(shards).unwrap_or(0).min(99);
            Bar {
                percent: p,
                label: format!("{purpose} running: {sent} devices sent"),
            }
        }
        _ => Bar {
            percent: 0,
            label: "not started".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_are_strict() {
        let r = notice_page("/console", 403, "T <b>", "x");
        assert_eq!(r.status, 403);
        assert!(!r.body.contains("<b>"));
        assert_eq!(r.headers["cache-control"], "no-store");
        let csp = &r.headers["content-security-policy"];
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe") && !r.body.contains("<script>"));
        assert!(!CSS.is_empty() && JS.contains("fetch"));
    }

    #[test]
    fn errors_sit_next_to_their_field() {
        let e = ApiError {
            status: 409,
            code: "export_control_conflict".into(),
            message: "segment s1 cannot be mapped".into(),
            field: Some("mappings[0].segmentId".into()),
        };
        let (notice, errors) = Errors::from_api(&e);
        assert!(notice.unwrap().text.contains("segment s1 cannot be mapped"));
        assert_eq!(
            errors.at("mappings[0]"),
            Some("segment s1 cannot be mapped")
        );
        assert_eq!(errors.at("mappings[1]"), None);
        assert_eq!(errors.at("mappings"), Some("segment s1 cannot be mapped"));
        assert_eq!(errors.at("mapping"), None);
    }

    #[test]
    fn bars_follow_the_backfill() {
        let b = bar(
            &json!({"status": "active", "backfill": {"state": "running", "shards": 4, "shardsDone": 1, "devicesSent": 9}}),
        );
        assert_eq!(b.percent, 25);
        let b = bar(&json!({"status": "active", "backfill": {"state": "done", "devicesSent": 9}}));
        assert_eq!(
            (b.percent, b.label.as_str()),
            (100, "backfill done: 9 devices sent")
        );
        assert_eq!(
            bar(&json!({"status": "pending", "backfill": null})).percent,
            0
        );
    }
}
