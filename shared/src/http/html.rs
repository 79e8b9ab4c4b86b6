//! Server-rendered HTML pages (the account-linking pages an admin sees in a browser).
//!
//! Templates live in `shared/templates/` and are rendered by askama, which HTML-escapes every
//! interpolated value (only the constant stylesheet is inserted raw). Every page is plain HTML
//! that works without JavaScript and is sent with the headers of [`security_headers`]: a strict
//! Content-Security-Policy (no scripts at all; the one inline style block is allowed by its
//! SHA-256), `Cache-Control: no-store`, `Referrer-Policy: no-referrer`, `X-Content-Type-Options:
//! nosniff` and framing denied.

use super::HttpResponse;
use askama::Template;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The pages' only stylesheet, inlined so the page needs no other request.
pub const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}\
header{background:#232f3e;color:#fff;padding:.8rem 1.5rem}.brand{font-weight:700}.crumb{opacity:.8;margin-left:.5rem}\
main{max-width:60rem;margin:1.5rem auto;padding:0 1.5rem}h1{font-size:1.5rem}h2{font-size:1.1rem}\
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.5rem .6rem;border-bottom:1px solid #d5d9de}\
button{background:#ff9900;border:1px solid #c77700;border-radius:4px;padding:.35rem .9rem;font-weight:600;cursor:pointer}\
code{background:#eef0f3;padding:.1rem .3rem;border-radius:3px}.muted{color:#5b6470;font-size:.9rem}\
section{background:#fff;border-left:4px solid #5b6470;padding:.2rem 1rem;margin:1rem 0}\
section.ok{border-color:#1e8e3e}section.error{border-color:#d13212}section.warn{border-color:#ff9900}";

static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; form-action 'self'; \
         base-uri 'none'; frame-ancestors 'none'"
    )
});

/// The Content-Security-Policy every page is sent with.
pub fn content_security_policy() -> &'static str {
    &CSP
}

/// The headers every page (and every redirect between pages) carries.
pub fn security_headers(mut r: HttpResponse) -> HttpResponse {
    for (k, v) in [
        ("content-security-policy", content_security_policy()),
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

/// An HTML response with the security headers.
pub fn html(status: u16, body: String) -> HttpResponse {
    let mut r = HttpResponse::new(status);
    r.headers
        .insert("content-type".into(), "text/html; charset=utf-8".into());
    r.body = body;
    security_headers(r)
}

/// `303 See Other` to `location` (a relative URL keeps working behind any path prefix).
pub fn see_other(location: &str) -> HttpResponse {
    let mut r = HttpResponse::new(303);
    r.headers.insert("location".into(), location.into());
    security_headers(r)
}

/// Renders a template; a rendering failure (a bug) becomes a plain 500 page, never a panic.
pub fn render<T: Template>(status: u16, page: &T) -> HttpResponse {
    match page.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "page rendering failed");
            html(
                500,
                "<!doctype html><title>adsync</title><h1>Something went wrong</h1>\
                 <p>adsync could not render this page. Try again; if it keeps failing, check the function's logs.</p>"
                    .into(),
            )
        }
    }
}

/// How a message page is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Ok,
    Warn,
    Error,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Ok => "ok",
            Tone::Warn => "warn",
            Tone::Error => "error",
        }
    }
}

/// A page that says what happened and what to do next.
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub style: &'static str,
    pub title: &'a str,
    pub tone: &'static str,
    pub what_happened: &'a str,
    pub what_to_do: &'a str,
    /// A reference an operator can find in the logs (a connection or request id).
    pub reference: Option<&'a str>,
}

/// A message page as a response.
pub fn message(
    status: u16,
    tone: Tone,
    title: &str,
    what_happened: &str,
    what_to_do: &str,
    reference: Option<&str>,
) -> HttpResponse {
    render(
        status,
        &MessagePage {
            style: STYLE,
            title,
            tone: tone.class(),
            what_happened,
            what_to_do,
            reference,
        },
    )
}

/// One row of the advertiser list.
#[derive(Clone, Debug)]
pub struct AdvertiserRow {
    pub advertiser_id: i64,
    pub name: String,
    pub country: String,
    pub currency: String,
    pub profile_id: i64,
    pub profile_name: String,
}

/// The advertiser accounts a login may link, each with its own Confirm form.
#[derive(Template)]
#[template(path = "accounts.html")]
pub struct AccountsPage<'a> {
    pub style: &'static str,
    pub title: &'a str,
    pub region: &'a str,
    pub connection_id: &'a str,
    pub advertisers: &'a [AdvertiserRow],
    /// The form action (relative, e.g. `confirm`).
    pub action: &'a str,
    pub csrf: &'a str,
    pub valid_until: &'a str,
}

/// The page shown once an account is linked.
#[derive(Template)]
#[template(path = "success.html")]
pub struct SuccessPage<'a> {
    pub style: &'static str,
    pub title: &'a str,
    pub account_id: &'a str,
    pub name: &'a str,
    pub region: &'a str,
    pub advertiser_id: i64,
    pub profile_id: i64,
    pub country: &'a str,
    pub currency: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_headers_are_strict() {
        let r = message(
            400,
            Tone::Error,
            "Bad <b>",
            "<script>alert(1)</script>",
            "a \"quote\" & 'x'",
            Some("c-1"),
        );
        assert_eq!(r.status, 400);
        assert!(!r.body.contains("<script>"), "{}", r.body);
        assert!(r.body.contains("&#60;script&#62;alert(1)"), "{}", r.body);
        assert!(!r.body.contains("\"quote\""));
        assert_eq!(r.headers["cache-control"], "no-store");
        assert_eq!(r.headers["referrer-policy"], "no-referrer");
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
        let csp = &r.headers["content-security-policy"];
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("form-action 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
    }

    #[test]
    fn the_style_hash_matches_the_inline_block() {
        let r = message(200, Tone::Ok, "t", "w", "d", None);
        let start = r.body.find("<style>").unwrap() + "<style>".len();
        let end = r.body.find("</style>").unwrap();
        let block = &r.body[start..end];
        let hash =
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(block.as_bytes()));
        assert!(content_security_policy().contains(&format!("'sha256-{hash}'")));
    }

    #[test]
    fn accounts_page_escapes_names_and_carries_the_forms() {
        let rows = [AdvertiserRow {
            advertiser_id: 42,
            name: "Acme \"<img src=x>\"".into(),
            country: "US".into(),
            currency: "USD".into(),
            profile_id: 7,
            profile_name: "Agency & Co".into(),
        }];
        let r = render(
            200,
            &AccountsPage {
                style: STYLE,
                title: "Choose",
                region: "NA",
                connection_id: "c1",
                advertisers: &rows,
                action: "confirm",
                csrf: "tok\"en",
                valid_until: "soon",
            },
        );
        assert!(!r.body.contains("<img"), "{}", r.body);
        assert!(r.body.contains("Agency &#38; Co"), "{}", r.body);
        assert!(r.body.contains(r#"action="confirm""#));
        assert!(r.body.contains(r#"name="advertiserId" value="42""#));
        assert!(!r.body.contains("tok\"en"));
    }
}
