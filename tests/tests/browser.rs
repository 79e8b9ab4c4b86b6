//! The account-linking flow in a real headless browser (Debian's chromium, driven through
//! chromedriver by fantoccini) against the local stack: open `authorizeUrl`, follow the sandbox's
//! consent redirect back to the oauth-callback handler (served over real HTTP on a local port),
//! see the accounts, click Confirm, see the success page. Saves `artifacts/linking-success.png`.
//!
//! Needs the stack env and `/usr/bin/chromium` + `/usr/bin/chromedriver` (Debian packages
//! `chromium`, `chromium-driver`); fails with a clear message when any is missing.

#[path = "linking_support/mod.rs"]
mod support;

use adsync::http::HttpRequest;
use adsync::runtime::{Handler, Invocation};
use axum::body::Body;
use fantoccini::{ClientBuilder, Locator};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Kills chromedriver (and with it the browser) when the test ends, pass or fail.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_browser() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(path).exists() {
            panic!(
                "{path} is missing: the browser test needs Debian's {package} package \
                 (sudo apt-get install chromium chromium-driver)"
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

async fn start_chromedriver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/status")).send().await
            && r.status().is_success()
        {
            return (driver, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {url} within 10 s");
}

/// Serves the oauth-callback handler over HTTP: each request becomes an `HttpRequest`, exactly
/// what API Gateway's payload 2.0 would carry.
async fn serve(rig: &Rig, listener: tokio::net::TcpListener) {
    let linking = rig.linking.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let linking = linking.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let mut r = HttpRequest::new(parts.method.as_str(), parts.uri.path())
                .with_query(parts.uri.query().unwrap_or(""))
                .with_body(body.to_vec());
            for (k, v) in &parts.headers {
                if let Ok(v) = v.to_str() {
                    r = r.with_header(k.as_str(), v);
                }
            }
            let resp = linking.http(r, Invocation::with_timeout(30)).await;
            let mut out = axum::http::Response::builder().status(resp.status);
            for (k, v) in &resp.headers {
                out = out.header(k, v);
            }
            out.body(Body::from(resp.body)).unwrap()
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).expect("creating artifacts/");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_an_account_in_a_headless_browser() {
    require_browser();
    let stack = stack().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let rig = rig(&stack, &format!("{base}/oauth/callback")).await;
    serve(&rig, listener).await;
    let user = user_in_every_region(&rig.sandbox, 2).await;
    let (_cid, authorize_url) = rig.create_connection("EU").await;
    let mut open = url::Url::parse(&authorize_url).unwrap();
    open.query_pairs_mut()
        .append_pair("sandbox_user", &user.user_id);

    let (_driver, driver_url) = start_chromedriver().await;
    let profile_dir =
        std::env::temp_dir().join(format!("adsync-chromium-{}", uuid::Uuid::new_v4().simple()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900",
                format!("--user-data-dir={}", profile_dir.display()),
            ],
        }),
    );
    let browser = ClientBuilder::rustls()
        .expect("the WebDriver client")
        .capabilities(caps)
        .connect(&driver_url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"));

    // Panics inside the steps are caught so the browser session is always closed first.
    let result = AssertUnwindSafe(async {
        browser.goto(open.as_str()).await?;
        // Amazon (the sandbox) consents and redirects to the callback, which redirects to the list.
        let table = browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("table#advertisers"))
            .await?;
        let now = browser.current_url().await?;
        assert_eq!(now.path(), "/oauth/callback");
        let q = now.query().unwrap_or("");
        assert!(
            q.starts_with("view=") && !q.contains("code=") && !q.contains("state="),
            "{now}"
        );
        let rows = table.find_all(Locator::Css("tbody tr")).await?;
        assert_eq!(
            rows.len(),
            2,
            "the EU profile's two advertisers are offered"
        );
        // The inline style is allowed by the CSP hash (a wrong hash would leave it unstyled).
        let bg = browser
            .execute(
                "return getComputedStyle(document.querySelector('header')).backgroundColor",
                vec![],
            )
            .await?;
        assert_eq!(
            bg,
            serde_json::json!("rgb(35, 47, 62)"),
            "the page's style was blocked"
        );

        let eu = user
            .profiles
            .iter()
            .find(|p| p.country_code == "UK")
            .unwrap();
        let chosen = eu.advertisers[0].advertiser_id;
        browser
            .find(Locator::Id(&format!("confirm-{chosen}")))
            .await?
            .click()
            .await?;
        let id = browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("account-id"))
            .await?;
        assert_eq!(id.text().await?, chosen.to_string());
        assert_eq!(
            browser.find(Locator::Id("title")).await?.text().await?,
            "Account linked"
        );
        assert_eq!(browser.current_url().await?.path(), "/oauth/confirm");
        let shot = browser.screenshot().await?;
        let path = artifacts_dir().join("linking-success.png");
        std::fs::write(&path, &shot).expect("writing the screenshot");
        assert!(shot.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        Ok::<i64, fantoccini::error::CmdError>(chosen)
    })
    .catch_unwind()
    .await;
    let _ = browser.close().await;
    let _ = std::fs::remove_dir_all(&profile_dir);
    let chosen = match result {
        Ok(Ok(chosen)) => chosen,
        Ok(Err(e)) => panic!("browser step failed: {e}"),
        Err(panic) => std::panic::resume_unwind(panic),
    };

    let acc = rig
        .accounts
        .get_account(&chosen.to_string())
        .await
        .unwrap()
        .expect("the account exists");
    assert_eq!(
        (acc.region, acc.currency.as_str()),
        (adsync::amazon::Region::EU, "GBP")
    );
}
