//! Demo step: account linking in every region through the sandbox, the way an admin does it in
//! a browser: `POST /connections` → open `authorizeUrl` (the sandbox's consent page approves as
//! the seeded user `sandbox-user`) → the callback's redirect to the account list → Confirm the
//! first advertiser → the success page naming the account id → `GET /accounts` shows it active.
//!
//! Remembers `accounts` (`{"NA": id, "EU": id, "FE": id}`) and `account_id` (the NA one) for
//! later steps.

use super::{Demo, expect_status};
use reqwest::Method;
use serde_json::{Value, json};

/// The text between `needle` and the next `"` (attribute values of our own pages).
fn after<'a>(page: &'a str, needle: &str) -> Option<&'a str> {
    let rest = &page[page.find(needle)? + needle.len()..];
    Some(&rest[..rest.find(['"', '<'])?])
}

pub async fn run(demo: &mut Demo) -> Result<(), String> {
    // The browser's part is played step by step, so redirects are followed by hand.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let mut linked = serde_json::Map::new();
    for region in ["NA", "EU", "FE"] {
        let reply = demo
            .call(
                Method::POST,
                "oauth-callback",
                "/connections",
                true,
                Some(&json!({ "region": region })),
            )
            .await?;
        expect_status(
            &reply,
            201,
            &format!("POST /connections {{\"region\":\"{region}\"}}"),
        )?;
        let v = reply.json();
        let cid = v["connectionId"].as_str().unwrap_or_default().to_string();
        let authorize = v["authorizeUrl"]
            .as_str()
            .ok_or("no authorizeUrl in the answer")?
            .to_string();
        demo.ok(format!(
            "{region}: connection {cid} created; consent link valid until {}",
            v["expiresAt"]
        ));

        // Amazon's consent page (the sandbox approves as the seeded user) sends the browser back.
        let consent = browser
            .get(&authorize)
            .send()
            .await
            .map_err(|e| format!("opening the consent page: {e}"))?;
        let callback = location(&consent, "the consent page")?;
        let cb = browser
            .get(callback.clone())
            .send()
            .await
            .map_err(|e| format!("GET the callback: {e}"))?;
        if cb.status().as_u16() != 303 {
            let status = cb.status().as_u16();
            return Err(format!(
                "the callback answered {status}: {}",
                cb.text().await.unwrap_or_default()
            ));
        }
        // The browser binding: the account list and the confirm need the callback's cookie.
        let cookie = cb
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or("the callback set no browser cookie")?
            .to_string();
        let list_url = callback
            .join(&location_str(&cb, "the callback")?)
            .map_err(|e| format!("the callback's redirect: {e}"))?;
        demo.ok(format!(
            "{region}: consent received (PKCE); redirected to a clean URL (no code or state) with the browser cookie"
        ));
        let elsewhere = browser
            .get(list_url.clone())
            .send()
            .await
            .map_err(|e| format!("GET the account list: {e}"))?
            .status()
            .as_u16();
        if elsewhere != 403 {
            return Err(format!(
                "the account list without the cookie answered {elsewhere}, not 403"
            ));
        }

        let page = browser
            .get(list_url.clone())
            .header("cookie", &cookie)
            .send()
            .await
            .map_err(|e| format!("GET the account list: {e}"))?
            .text()
            .await
            .map_err(|e| format!("reading the account list: {e}"))?;
        let csrf = after(&page, r#"name="csrf" value=""#).ok_or("the account list has no form")?;
        let advertiser =
            after(&page, r#"name="advertiserId" value=""#).ok_or("the account list is empty")?;
        let offered = page.matches(r#"name="advertiserId""#).count();
        demo.ok(format!(
            "{region}: the account list offers {offered} advertiser account(s)"
        ));

        let confirm_url = list_url.join("confirm").map_err(|e| e.to_string())?;
        let done = browser
            .post(confirm_url)
            .header("cookie", &cookie)
            .form(&[("csrf", csrf), ("advertiserId", advertiser)])
            .send()
            .await
            .map_err(|e| format!("POST confirm: {e}"))?;
        let status = done.status().as_u16();
        let body = done.text().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("confirm answered {status}: {body}"));
        }
        let account_id = after(&body, r#"<code id="account-id">"#)
            .ok_or("the success page names no account id")?;
        let name = after(&body, r#"<strong id="account-name">"#).unwrap_or("?");
        demo.ok(format!(
            "{region}: linked account {account_id} ({name}); use this id in adsync"
        ));
        linked.insert(region.to_string(), Value::String(account_id.to_string()));
    }

    let reply = demo
        .call(Method::GET, "oauth-callback", "/accounts", true, None)
        .await?;
    expect_status(&reply, 200, "GET /accounts")?;
    let accounts = reply.json()["accounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (region, id) in &linked {
        let a = accounts
            .iter()
            .find(|a| &a["accountId"] == id)
            .ok_or_else(|| format!("GET /accounts does not list {id}"))?;
        if a["status"] != "active" {
            return Err(format!("account {id} is {} instead of active", a["status"]));
        }
        demo.info(format!(
            "{region}: account {} — {} ({}, {}), status {}",
            id.as_str().unwrap_or(""),
            a["name"].as_str().unwrap_or(""),
            a["country"].as_str().unwrap_or(""),
            a["currency"].as_str().unwrap_or(""),
            a["status"].as_str().unwrap_or("")
        ));
    }
    demo.ok(format!(
        "GET /accounts lists the {} linked accounts as active",
        linked.len()
    ));
    if let Some(na) = linked.get("NA").cloned() {
        demo.remember("account_id", na);
    }
    demo.remember("accounts", Value::Object(linked));
    Ok(())
}

fn location_str(r: &reqwest::Response, what: &str) -> Result<String, String> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| format!("{what} answered {} without a redirect", r.status()))
}

fn location(r: &reqwest::Response, what: &str) -> Result<url::Url, String> {
    let loc = location_str(r, what)?;
    url::Url::parse(&loc).map_err(|e| format!("{what} redirected to an invalid URL: {e}"))
}
