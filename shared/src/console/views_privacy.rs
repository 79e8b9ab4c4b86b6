//! The Privacy page: submit an erasure (`POST /privacy/deletions`) and watch it
//! (`GET /privacy/deletions/{id}`), with the API's rules and words.

use super::api::seg;
use super::pages::{self, Chrome, Errors, Notice};
use super::{Console, Req};
use crate::http::HttpResponse;
use askama::Template;
use serde_json::{Value, json};

/// Device rows on the form.
const ROWS: usize = 3;

/// An erasure as shown: id, status, and its steps as (name, state) lines.
pub type Job = (String, String, Vec<(String, String)>);

pub struct DeviceRow {
    pub index: usize,
    pub id_type: String,
    pub device_id: String,
}

#[derive(Template)]
#[template(path = "console/privacy.html")]
pub struct PrivacyPage {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub rows: Vec<DeviceRow>,
    pub id_types: [&'static str; 3],
    pub errors: Errors,
    /// The erasure shown.
    pub job: Option<Job>,
}

fn page(
    r: &Req<'_>,
    shown: (Option<Notice>, Errors),
    job: Option<&Value>,
    status: u16,
) -> HttpResponse {
    let f = &r.form;
    let rows = (0..ROWS)
        .map(|i| DeviceRow {
            index: i,
            id_type: f.text(&format!("devices[{i}].idType")),
            device_id: f.text(&format!("devices[{i}].deviceId")),
        })
        .collect();
    let job = job.map(|j| {
        let steps = j["steps"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), step_text(v)))
            .collect();
        (
            j["deletionId"].as_str().unwrap_or("").to_string(),
            j["status"].as_str().unwrap_or("").to_string(),
            steps,
        )
    });
    let page = PrivacyPage {
        c: r.chrome.clone(),
        title: "Privacy".into(),
        notice: shown.0,
        rows,
        id_types: ["COOKIE", "MAID", "EXTERNAL_USER_ID"],
        errors: shown.1,
        job,
    };
    pages::render(status, &page)
}

/// A step as words: its state, then its figures (`pending · rowsScanned 0, rowsRemoved 0`).
fn step_text(v: &Value) -> String {
    let state = v["state"].as_str().unwrap_or("").to_string();
    let figures: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, x)| *k != "state" && (x.is_number() || x.is_string()))
        .map(|(k, x)| {
            format!(
                "{k} {}",
                x.as_str().map_or_else(|| x.to_string(), str::to_string)
            )
        })
        .collect();
    if figures.is_empty() {
        state
    } else {
        format!("{state} · {}", figures.join(", "))
    }
}

/// `GET privacy`: the erasure form.
pub fn form(r: &Req<'_>) -> HttpResponse {
    page(r, Default::default(), None, 200)
}

/// `POST privacy`: `POST /privacy/deletions`.
pub async fn submit(con: &Console, r: &Req<'_>) -> HttpResponse {
    let devices: Vec<Value> = (0..ROWS)
        .filter_map(|i| {
            let id = r.form.text(&format!("devices[{i}].deviceId"));
            (!id.is_empty()).then(
                || json!({"idType": r.form.text(&format!("devices[{i}].idType")), "deviceId": id}),
            )
        })
        .collect();
    let body = json!({ "devices": devices });
    let a = con
        .api
        .call(
            &r.session.caller,
            "POST",
            "/privacy/deletions",
            Some(&body),
            r.inv,
        )
        .await;
    match a.error() {
        Some(e) => page(r, Errors::from_api(&e), None, a.status),
        None => page(
            r,
            (Notice::ok("Erasure requested."), Errors::default()),
            Some(&a.body),
            200,
        ),
    }
}

/// `GET privacy/{id}`: one erasure's progress.
pub async fn job(con: &Console, r: &Req<'_>, id: &str) -> HttpResponse {
    let a = con
        .api
        .get(
            &r.session.caller,
            &format!("/privacy/deletions/{}", seg(id)),
            r.inv,
        )
        .await;
    match a.error() {
        Some(e) => page(r, Errors::from_api(&e), None, a.status),
        None => page(r, Default::default(), Some(&a.body), 200),
    }
}
