//! The console in a real headless browser (Debian's chromium through chromedriver) against the
//! local stack: sign in, link an account in the sandbox, register two segments with a conflicting
//! control, see the conflict refused on a new destination, create it without, watch the backfill
//! bar reach 100 % (updated by progress.js, no reload), change fees (an invalid fee answered next
//! to its field in the API's words), see conversion counts, redrive parked conversions, request an
//! erasure and watch it, sign out
//! (the cookie no longer works); a forged CSRF token and a missing cookie are refused. Saves the
//! main pages to `docs/screenshots/`.
//!
//! Also feeds the console's sample events (`infra/events/console/`) to a console built from the
//! stack's environment, as Lambda would.

#[path = "linking_support/mod.rs"]
mod support;

#[path = "console_support/mod.rs"]
mod console_support;

use adsync::http::HttpRequest;
use adsync::runtime::{Handler, Invocation};
use adsync_tests::sandbox::FaultSpec;
use console_support::*;
use fantoccini::{Client, Locator};
use futures::FutureExt;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use support::*;

type R<T = ()> = Result<T, fantoccini::error::CmdError>;

async fn wait(b: &Client, css: &str) -> R<fantoccini::elements::Element> {
    b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
}

async fn click(b: &Client, css: &str) -> R {
    b.find(Locator::Css(css)).await?.click().await
}

/// Clicks a button that loads a new page and waits until that page has loaded.
async fn submit(b: &Client, css: &str) -> R {
    b.execute("window.adsyncOldPage = true;", vec![]).await?;
    click(b, css).await?;
    for _ in 0..300 {
        let loaded = b
            .execute(
                "return window.adsyncOldPage !== true && document.readyState === 'complete'",
                vec![],
            )
            .await;
        if matches!(loaded, Ok(v) if v == json!(true)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} did not load a new page within 30 s");
}

async fn fill(b: &Client, css: &str, text: &str) -> R {
    let e = b.find(Locator::Css(css)).await?;
    e.clear().await?;
    e.send_keys(text).await
}

async fn text(b: &Client, css: &str) -> R<String> {
    b.find(Locator::Css(css)).await?.text().await
}

async fn title(b: &Client) -> R<String> {
    text(b, "#title").await
}

async fn shot(b: &Client, name: &str) -> R {
    let png = b.screenshot().await?;
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(screenshots_dir().join(format!("console-{name}.png")), png).unwrap();
    Ok(())
}

async fn select(b: &Client, css: &str, value: &str) -> R {
    b.find(Locator::Css(css))
        .await?
        .select_by_value(value)
        .await
}

async fn register_segment(b: &Client, w: &World, id: &str, name: &str, control: Option<&str>) -> R {
    b.goto(&format!("{}/console/segments", w.base)).await?;
    fill(b, "#segmentId", id).await?;
    fill(b, "#name", name).await?;
    if let Some(c) = control {
        click(b, &format!("#control-{c}")).await?;
    }
    submit(b, "#save-segment").await?;
    let notice = text(b, "#notice").await?;
    assert_eq!(notice, format!("Segment {id} saved."));
    Ok(())
}

/// Qualifies `n` devices for `segment` through the API's own route (as a CDP would).
async fn qualify(w: &World, segment: &str, n: usize) {
    let q: Vec<_> = (0..n)
        .map(|i| json!({"segmentId": segment, "deviceId": format!("dev-{segment}-{i}"), "idType": "COOKIE",
            "status": "qualified", "timestamp": chrono::Utc::now().to_rfc3339()}))
        .collect();
    let req = HttpRequest::new("POST", "/qualifications")
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(&json!({ "qualifications": q })).unwrap());
    let r = adsync::export::route_authorized(
        &w.console.api.export,
        &req,
        &Invocation::with_timeout(30),
    )
    .await;
    assert!(r.status < 300, "{}", r.body);
}

async fn post_conversions(
    w: &World,
    account: &str,
    events: serde_json::Value,
) -> serde_json::Value {
    let req = HttpRequest::new("POST", &format!("/accounts/{account}/conversions"))
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(&events).unwrap());
    let r = w
        .ingest
        .ctx
        .handle_conversions(&req, &Invocation::with_timeout(60), account)
        .await;
    r.json_body()
}

async fn flows(b: &Client, w: &World, stack: &Stack) -> R {
    let console = format!("{}/console", w.base);
    // Without a session every page sends the browser to the sign-in page.
    b.goto(&format!("{console}/destinations")).await?;
    assert_eq!(title(b).await?, "Sign in");
    fill(b, "#key", "not-the-key").await?;
    submit(b, "#sign-in").await?;
    assert_eq!(text(b, "#notice").await?, "That key is not valid.");
    shot(b, "sign-in").await?;
    fill(b, "#key", &w.key).await?;
    submit(b, "#sign-in").await?;
    assert_eq!(title(b).await?, "Destinations");
    // The Secure cookie was kept on http://127.0.0.1 and carries the strict flags.
    let cookie = b.get_named_cookie("adsync_console").await?;
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let session_id = cookie.value().to_string();

    // Accounts: add one through the linking flow (region → Login with Amazon → Confirm).
    let user = user_in_every_region(&stack.sandbox, 1).await;
    let adv = user
        .profiles
        .iter()
        .find(|p| p.country_code == "US")
        .unwrap()
        .advertisers[0]
        .advertiser_id;
    b.goto(&format!("{console}/accounts")).await?;
    select(b, "#region", "NA").await?;
    submit(b, "#add-account").await?;
    let href = wait(b, "#continue-to-amazon")
        .await?
        .attr("href")
        .await?
        .unwrap();
    let mut consent = url::Url::parse(&href).unwrap();
    consent
        .query_pairs_mut()
        .append_pair("sandbox_user", &user.user_id);
    b.goto(consent.as_str()).await?;
    wait(b, "table#advertisers").await?;
    submit(b, &format!("#confirm-{adv}")).await?;
    assert_eq!(wait(b, "#account-id").await?.text().await?, adv.to_string());
    b.goto(&format!("{console}/accounts")).await?;
    let row = text(b, &format!("tr[data-account-id='{adv}']")).await?;
    assert!(row.contains("active"), "{row}");
    shot(b, "accounts").await?;

    // Segments: two, one that may not be used for off-site ad targeting.
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (s1, s2) = (format!("shoppers-{tag}"), format!("readers-{tag}"));
    register_segment(
        b,
        w,
        &s1,
        "Recent shoppers",
        Some("NO_OFFSITE_AD_TARGETING"),
    )
    .await?;
    register_segment(b, w, &s2, "Newsletter readers", None).await?;
    // A validation error sits next to its field, in the API's words.
    fill(b, "#segmentId", &format!("bad-{tag}")).await?;
    fill(b, "#name", "").await?;
    submit(b, "#save-segment").await?;
    assert!(!text(b, "#error-name").await?.is_empty());
    shot(b, "segments").await?;
    qualify(w, &s1, 40).await;
    qualify(w, &s2, 25).await;

    // Destinations: the off-site label conflicts with the first segment's control: refused.
    b.goto(&format!("{console}/destinations")).await?;
    fill(b, "#name", &format!("DSP {tag}")).await?;
    select(b, "#accountId", &adv.to_string()).await?;
    click(b, "#label-OFFSITE_AD_TARGETING").await?;
    select(b, "#mapping-0-segment", &s1).await?;
    select(b, "#mapping-1-segment", &s2).await?;
    fill(b, "input[name='mappings[1].cpmCents']", "150").await?;
    fill(b, "input[name='mappings[1].currency']", "USD").await?;
    submit(b, "#create-destination").await?;
    let err = text(b, "#error-mapping-0").await?;
    assert!(
        err.contains(&s1) && err.contains("OFFSITE_AD_TARGETING"),
        "{err}"
    );
    assert!(
        text(b, "#destinations").await?.lines().count() <= 1,
        "nothing was created"
    );
    shot(b, "conflict").await?;
    // The form kept its values; without the conflicting label it is created.
    click(b, "#label-OFFSITE_AD_TARGETING").await?;
    click(b, "#label-ONSITE_AD_TARGETING").await?;
    submit(b, "#create-destination").await?;
    assert_eq!(text(b, "#notice").await?, "Destination created.");
    assert_eq!(text(b, &format!("#status-{s1}")).await?, "pending");

    // The scheduled backfill runs; the bars follow it without a reload.
    b.execute("window.adsyncNoReload = true;", vec![]).await?;
    let ctx = w.console.api.export.clone();
    let backfill = tokio::spawn(async move {
        // The backfill task's two steps for this test's destinations table (the whole task also
        // scans the shared ledger for erasures).
        for _ in 0..20 {
            let inv = Invocation::with_timeout(20);
            adsync::export::destinations::create_pending_audiences(
                &ctx,
                &inv,
                Duration::from_secs(5),
            )
            .await;
            let _ = adsync::export::members::run_backfill_with(
                &ctx,
                &inv,
                &adsync_tests::export_rig::opts(10),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut done = false;
    for _ in 0..120 {
        let v = b
            .execute(
                &format!("return document.getElementById('bar-{s1}').value"),
                vec![],
            )
            .await?;
        let v2 = b
            .execute(
                &format!("return document.getElementById('bar-{s2}').value"),
                vec![],
            )
            .await?;
        if v == json!(100) && v2 == json!(100) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    backfill.abort();
    assert!(done, "the backfill bars did not reach 100 %");
    assert_eq!(
        b.execute("return window.adsyncNoReload === true", vec![])
            .await?,
        json!(true)
    );
    // The script also shows the mapping's new status and audience id.
    assert_eq!(text(b, &format!("#status-{s1}")).await?, "active");
    assert!(
        text(b, &format!("#audience-{s1}"))
            .await?
            .parse::<i64>()
            .is_ok()
    );
    let label = text(b, &format!("#bar-label-{s1}")).await?;
    assert!(
        label.starts_with("100 %") && label.contains("40 devices"),
        "{label}"
    );
    shot(b, "destination").await?;

    // Fees: an invalid one is refused next to its form in the API's words; a valid one is saved.
    fill(b, &format!("#fee-cpm-{s2}"), "-5").await?;
    submit(b, &format!("#save-fees-{s2}")).await?;
    assert!(!text(b, &format!("#error-fees-{s2}")).await?.is_empty());
    fill(b, &format!("#fee-cpm-{s2}"), "275").await?;
    submit(b, &format!("#save-fees-{s2}")).await?;
    assert_eq!(text(b, "#notice").await?, format!("Fees of {s2} saved."));
    let cpm = b
        .find(Locator::Css(&format!("#fee-cpm-{s2}")))
        .await?
        .prop("value")
        .await?;
    assert_eq!(cpm.as_deref(), Some("275"));

    // Conversions: accepted, duplicate and rejected events, then two parked while Amazon fails.
    let account = adv.to_string();
    let good: Vec<_> = (0..3)
        .map(|i| adsync_tests::conversions::purchase(&tag, i))
        .collect();
    let mut events = good.clone();
    events.push(good[0].clone());
    events.push(json!({"name": "Broken", "eventType": "LEAD", "countryCode": "US", "matchKeys": {"email": "x@y.z"}}));
    let r = post_conversions(w, &account, json!({ "events": events })).await;
    assert_eq!(r["totals"]["accepted"], 3, "{r}");
    let fault = stack
        .sandbox
        .add_fault(
            &FaultSpec::status(503)
                .path_prefix("/adsApi/v1/create/events")
                .account_id(adv)
                .forever(),
        )
        .await
        .unwrap();
    let parked: Vec<_> = (10..12)
        .map(|i| adsync_tests::conversions::purchase(&tag, i))
        .collect();
    let r = post_conversions(w, &account, json!({ "events": parked })).await;
    assert_eq!(r["totals"]["parked"], 2, "{r}");
    stack.sandbox.remove_fault(&fault).await.unwrap();
    b.goto(&format!("{console}/conversions")).await?;
    let row = format!("tr[data-account-id='{account}'][data-period='24 hours']");
    assert_eq!(text(b, &format!("{row} .received")).await?, "7");
    assert_eq!(text(b, &format!("{row} .accepted")).await?, "3");
    assert_eq!(text(b, &format!("{row} .duplicate")).await?, "1");
    assert!(
        text(b, &format!("{row} .rejected"))
            .await?
            .starts_with("1 (missing"),
        "the top reason"
    );
    assert_eq!(text(b, &format!("{row} .parked")).await?, "2");
    assert_eq!(text(b, &format!("{row} .parked-now")).await?, "2");
    shot(b, "conversions").await?;
    submit(b, "#redrive").await?;
    assert!(text(b, "#notice").await?.starts_with("Redrive started"));
    assert_eq!(text(b, &format!("{row} .parked-now")).await?, "0");
    let sent = stack.sandbox.events(adv).await.unwrap();
    assert_eq!(
        sent.counts_by_event_id.len(),
        5,
        "3 accepted + 2 redriven, once each"
    );

    // Privacy: an invalid device id is refused next to its row; a valid erasure is watched.
    b.goto(&format!("{console}/privacy")).await?;
    fill(b, "#device-0", "not valid").await?;
    submit(b, "#erase").await?;
    assert!(!text(b, "#error-device-0").await?.is_empty());
    fill(b, "#device-0", &format!("dev-{s1}-0")).await?;
    submit(b, "#erase").await?;
    assert_eq!(text(b, "#notice").await?, "Erasure requested.");
    let deletion = text(b, "#deletion-id").await?;
    b.find(Locator::Css("#refresh-deletion"))
        .await?
        .click()
        .await?;
    assert_eq!(wait(b, "#deletion-id").await?.text().await?, deletion);
    assert!(!text(b, "#deletion-status").await?.is_empty());
    shot(b, "privacy").await?;

    // A forged CSRF token is refused (and changes nothing).
    b.goto(&format!("{console}/segments/{s2}")).await?;
    b.execute(
        "document.querySelector('#segment-form input[name=csrf]').value = 'forged';",
        vec![],
    )
    .await?;
    fill(b, "#name", "Hijacked").await?;
    submit(b, "#save-segment").await?;
    assert_eq!(title(b).await?, "Form refused");
    b.goto(&format!("{console}/segments")).await?;
    assert!(!text(b, "#segments").await?.contains("Hijacked"));

    // A form posted without the cookie is refused.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let csrf = b
        .find(Locator::Css("#segment-form input[name=csrf]"))
        .await?
        .prop("value")
        .await?
        .unwrap();
    let form = [("csrf", csrf.as_str()), ("name", "No cookie")];
    let r = http
        .post(format!("{console}/segments/{s2}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // … and with it, the same form is accepted (so the refusal above was the missing cookie).
    let with =
        |rb: reqwest::RequestBuilder| rb.header("cookie", format!("adsync_console={session_id}"));
    let r = with(http.get(format!("{console}/segments")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Sign out: the session is deleted, so the old cookie no longer works.
    submit(b, "#sign-out").await?;
    assert_eq!(title(b).await?, "Sign in");
    let r = with(http.get(format!("{console}/segments")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "a revoked session is signed out");
    let r = with(http.post(format!("{console}/segments/{s2}")))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_walks_every_flow_in_a_headless_browser() {
    let stack = stack().await;
    let w = world(&stack).await;
    let (_driver, b, profile) = browser().await;
    let result = AssertUnwindSafe(flows(&b, &w, &stack)).catch_unwind().await;
    if !matches!(result, Ok(Ok(()))) {
        let _ = shot(&b, "failure").await;
    }
    let _ = b.close().await;
    let _ = std::fs::remove_dir_all(&profile);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("browser step failed: {e}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Wrong keys are rate-limited per source IP: after the limit even the right key is refused.
#[tokio::test]
async fn wrong_keys_are_rate_limited_per_address() {
    let stack = stack().await;
    let w = world(&stack).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |key: String| {
        let (http, base) = (http.clone(), w.base.clone());
        async move {
            let page = http
                .get(format!("{base}/console/sign-in"))
                .send()
                .await
                .unwrap();
            let cookie = page.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            let html = page.text().await.unwrap();
            let csrf = csrf_of(&html);
            http.post(format!("{base}/console/sign-in"))
                .header("cookie", cookie)
                .form(&[("csrf", csrf.as_str()), ("key", key.as_str())])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..3 {
        assert_eq!(sign_in("wrong".into()).await, 401);
    }
    assert_eq!(sign_in(w.key.clone()).await, 429);
}

/// `infra/events/console/*.json` through a console built from the stack's environment.
#[tokio::test]
async fn console_sample_events() {
    require_env();
    let aws = adsync::aws::AwsClients::from_env().await;
    let console = adsync::console::Console::from_env(&aws)
        .await
        .expect("the console starts");
    let load = |f: &str| -> serde_json::Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../infra/events/console")
            .join(f);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let run = |ev: serde_json::Value| {
        adsync::runtime::dispatch(&console, ev, Invocation::with_timeout(30))
    };
    let home = run(load("home.json")).await.unwrap();
    assert_eq!(home["statusCode"], 303);
    assert_eq!(home["headers"]["location"], "console/sign-in");
    let page = run(load("sign-in-page.json")).await.unwrap();
    assert_eq!(page["statusCode"], 200);
    assert!(
        page["cookies"][0]
            .as_str()
            .unwrap()
            .contains("HttpOnly; Secure; SameSite=Strict")
    );
    let signed = run(load("sign-in.json")).await.unwrap();
    assert_eq!(signed["statusCode"], 303, "{signed}");
    assert!(
        signed["cookies"][0]
            .as_str()
            .unwrap()
            .starts_with("adsync_console=")
    );
    let _ = console
        .http(
            HttpRequest::new("GET", "/console/static/console.css"),
            Invocation::with_timeout(5),
        )
        .await;
}
