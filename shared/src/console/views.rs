//! Segments and destinations pages (Audience Manager's "Segments" and "Create Destination").
//! Every action is the API's request, called in process ([`super::api`]); an answer's error is
//! shown next to its field.

use super::api::{Answer, seg};
use super::forms::{self, MAPPING_ROWS};
use super::pages::{self, Bar, Chrome, Errors, Notice};
use super::{Console, Req};
use crate::http::HttpResponse;
use askama::Template;
use serde_json::{Value, json};

const CONTROLS: [(&str, &str); 4] = [
    ("NO_PII_COMBINATION", "no combination with personal data"),
    ("NO_ONSITE_AD_TARGETING", "no on-site ad targeting"),
    ("NO_OFFSITE_AD_TARGETING", "no off-site ad targeting"),
    ("NO_ONSITE_PERSONALIZATION", "no on-site personalization"),
];
const LABELS: [(&str, &str); 4] = [
    ("PII_COMBINATION", "combination with personal data"),
    ("ONSITE_AD_TARGETING", "on-site ad targeting"),
    ("OFFSITE_AD_TARGETING", "off-site ad targeting"),
    ("ONSITE_PERSONALIZATION", "on-site personalization"),
];

type Shown = (Option<Notice>, Errors);

fn refused(a: &Answer) -> Shown {
    a.error().map(|e| Errors::from_api(&e)).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub struct SegmentRow {
    pub id: String,
    pub name: String,
    pub controls: String,
}

#[derive(Template)]
#[template(path = "console/segments.html")]
pub struct SegmentsPage {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub segments: Vec<SegmentRow>,
    pub editing: bool,
    pub action: String,
    pub form_id: String,
    pub form_name: String,
    pub form_description: String,
    pub controls: Vec<(&'static str, &'static str, bool)>,
    pub errors: Errors,
}

async fn segment_rows(con: &Console, r: &Req<'_>) -> (Vec<SegmentRow>, Option<Notice>) {
    let a = con
        .api
        .get(&r.session.caller, "/segments?limit=100", r.inv)
        .await;
    if let Some(e) = a.error() {
        return (Vec::new(), Notice::error(e.message));
    }
    let rows = a.body["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| SegmentRow {
            id: text(&s["segmentId"]),
            name: text(&s["name"]),
            controls: text(&s["dataExportControls"]),
        })
        .collect();
    (rows, None)
}

fn segments_page(
    r: &Req<'_>,
    rows: Vec<SegmentRow>,
    editing: Option<&str>,
    values: &Value,
    shown: Shown,
    status: u16,
) -> HttpResponse {
    let on: Vec<String> = values["dataExportControls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let base = &r.chrome.base;
    let page = SegmentsPage {
        c: r.chrome.clone(),
        title: editing.map_or("Segments".into(), |s| format!("Segment {s}")),
        notice: shown.0,
        segments: rows,
        editing: editing.is_some(),
        action: editing.map_or(format!("{base}/segments"), |s| {
            format!("{base}/segments/{}", seg(s))
        }),
        form_id: text(&values["segmentId"]),
        form_name: text(&values["name"]),
        form_description: text(&values["description"]),
        controls: CONTROLS
            .iter()
            .map(|(v, l)| (*v, *l, on.iter().any(|x| x == v)))
            .collect(),
        errors: shown.1,
    };
    pages::render(status, &page)
}

/// `GET segments`: the list and the register form.
pub async fn segments(con: &Console, r: &Req<'_>, shown: Option<Shown>) -> HttpResponse {
    let (rows, failed) = segment_rows(con, r).await;
    let shown = shown.unwrap_or((failed, Errors::default()));
    segments_page(r, rows, None, &json!({}), shown, 200)
}

/// `GET segments/{id}`: the edit form.
pub async fn segment(con: &Console, r: &Req<'_>, id: &str, shown: Option<Shown>) -> HttpResponse {
    let a = con
        .api
        .get(&r.session.caller, &format!("/segments/{}", seg(id)), r.inv)
        .await;
    if let Some(e) = a.error() {
        return pages::notice_page(&r.chrome.base, e.status, "Segment", &e.message);
    }
    let (rows, _) = segment_rows(con, r).await;
    segments_page(r, rows, Some(id), &a.body, shown.unwrap_or_default(), 200)
}

/// `POST segments[/{id}]`: `PUT /segments/{id}`.
pub async fn save_segment(con: &Console, r: &Req<'_>, id: Option<&str>) -> HttpResponse {
    let body = forms::segment_body(&r.form);
    let seg_id = id
        .map(str::to_string)
        .unwrap_or_else(|| r.form.text("segmentId"));
    let mut values = body.clone();
    values["segmentId"] = json!(seg_id);
    let answer = if seg_id.is_empty() {
        let mut e = Errors::default();
        e.by_field
            .insert("segmentId".into(), "a segment id is required".into());
        let (rows, _) = segment_rows(con, r).await;
        return segments_page(
            r,
            rows,
            None,
            &values,
            (Notice::error("Not saved: a segment id is required."), e),
            400,
        );
    } else {
        con.api
            .call(
                &r.session.caller,
                "PUT",
                &format!("/segments/{}", seg(&seg_id)),
                Some(&body),
                r.inv,
            )
            .await
    };
    let (rows, _) = segment_rows(con, r).await;
    if answer.ok() {
        let shown = (
            Notice::ok(format!("Segment {seg_id} saved.")),
            Errors::default(),
        );
        return segments_page(r, rows, None, &json!({}), shown, 200);
    }
    segments_page(r, rows, id, &values, refused(&answer), answer.status)
}

/// `POST segments/{id}/delete`: `DELETE /segments/{id}`.
pub async fn delete_segment(con: &Console, r: &Req<'_>, id: &str) -> HttpResponse {
    let a = con
        .api
        .call(
            &r.session.caller,
            "DELETE",
            &format!("/segments/{}", seg(id)),
            None,
            r.inv,
        )
        .await;
    if a.ok() {
        return segments(
            con,
            r,
            Some((
                Notice::ok(format!("Segment {id} deleted.")),
                Errors::default(),
            )),
        )
        .await;
    }
    segment(con, r, id, Some(refused(&a))).await
}

pub struct DestRow {
    pub id: String,
    pub name: String,
    pub account: String,
    pub status: String,
    pub mappings: usize,
}

pub struct MappingRow {
    pub index: usize,
    pub prefix: String,
    pub segment: String,
    pub cpm: String,
    pub currency: String,
    pub audience: String,
}

#[derive(Template)]
#[template(path = "console/destinations.html")]
pub struct DestinationsPage {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub destinations: Vec<DestRow>,
    pub accounts: Vec<(String, String)>,
    pub segments: Vec<(String, String)>,
    pub labels: Vec<(&'static str, &'static str, bool)>,
    pub rows: Vec<MappingRow>,
    pub f: forms::Form,
    pub errors: Errors,
}

/// `GET destinations` (and the create form re-shown with its errors).
pub async fn destinations(con: &Console, r: &Req<'_>, shown: Option<(Shown, u16)>) -> HttpResponse {
    let caller = &r.session.caller;
    let (list, accounts, (segs, _)) = futures::join!(
        con.api.get(caller, "/destinations?limit=100", r.inv),
        con.api.get(caller, "/accounts", r.inv),
        segment_rows(con, r),
    );
    let ((mut notice, errors), status) = shown.unwrap_or(((None, Errors::default()), 200));
    if let Some(e) = list.error() {
        notice = Notice::error(e.message);
    }
    let f = &r.form;
    let on = f.all("dataExportLabels");
    let page = DestinationsPage {
        c: r.chrome.clone(),
        title: "Destinations".into(),
        notice,
        destinations: list.body["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| DestRow {
                id: text(&d["destinationId"]),
                name: text(&d["name"]),
                account: text(&d["accountId"]),
                status: text(&d["status"]),
                mappings: d["mappings"].as_array().map_or(0, Vec::len),
            })
            .collect(),
        accounts: accounts.body["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let id = text(&a["accountId"]);
                (
                    id.clone(),
                    format!("{} ({id}, {})", text(&a["name"]), text(&a["region"])),
                )
            })
            .collect(),
        segments: segs.into_iter().map(|s| (s.id, s.name)).collect(),
        labels: LABELS
            .iter()
            .map(|(v, l)| (*v, *l, on.iter().any(|x| x == v)))
            .collect(),
        rows: (0..MAPPING_ROWS)
            .map(|i| {
                let p = format!("mappings[{i}]");
                MappingRow {
                    index: i,
                    segment: f.text(&format!("{p}.segmentId")),
                    cpm: f.text(&format!("{p}.cpmCents")),
                    currency: f.text(&format!("{p}.currency")),
                    audience: f.text(&format!("{p}.audienceId")),
                    prefix: p,
                }
            })
            .collect(),
        f: f.clone(),
        errors,
    };
    pages::render(status, &page)
}

/// `POST destinations`: `POST /destinations`.
pub async fn create_destination(con: &Console, r: &Req<'_>) -> HttpResponse {
    let body = forms::destination_body(&r.form);
    let a = con
        .api
        .call(
            &r.session.caller,
            "POST",
            "/destinations",
            Some(&body),
            r.inv,
        )
        .await;
    if a.ok() {
        let id = text(&a.body["destinationId"]);
        let shown = (Notice::ok("Destination created."), Errors::default());
        return destination(con, r, &id, Some(shown)).await;
    }
    destinations(con, r, Some((refused(&a), a.status))).await
}

pub struct MapView {
    pub segment: String,
    pub status: String,
    pub why: Option<String>,
    pub audience: String,
    pub bar: Bar,
    pub size: String,
    pub cpm: String,
    pub currency: String,
    pub fee_field: String,
}

pub struct DestView {
    pub id: String,
    pub account: String,
    pub status: String,
    pub labels: String,
    pub countries: String,
    pub ttl: String,
    pub errors: Vec<String>,
    pub mappings: Vec<MapView>,
}

#[derive(Template)]
#[template(path = "console/destination.html")]
pub struct DestinationPage {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub d: DestView,
    pub segments: Vec<(String, String)>,
    pub errors: Errors,
}

fn size(m: &Value) -> String {
    match (m["audienceSize"].as_u64(), m["matchRate"].as_f64()) {
        (None, _) => "not measured yet".into(),
        (Some(n), Some(rate)) => format!("{n} records, {:.0} % matched", rate * 100.0),
        (Some(n), None) => format!("{n} records"),
    }
}

fn map_view(m: &Value) -> MapView {
    let segment = text(&m["segmentId"]);
    let fee = &m["audienceFees"][0];
    let why = [&m["blockedReason"], &m["lastError"]]
        .into_iter()
        .map(text)
        .find(|s| !s.is_empty());
    MapView {
        status: text(&m["status"]),
        why,
        audience: match text(&m["audienceId"]) {
            a if a.is_empty() => "not created yet".into(),
            a => a,
        },
        bar: pages::bar(m),
        size: size(m),
        cpm: text(&fee["cpmCents"]),
        currency: text(&fee["currency"]),
        fee_field: format!("fees-{segment}"),
        segment,
    }
}

/// `GET destinations/{id}`: mappings, progress, sizes, fees, errors.
pub async fn destination(
    con: &Console,
    r: &Req<'_>,
    id: &str,
    shown: Option<Shown>,
) -> HttpResponse {
    let path = format!("/destinations/{}", seg(id));
    let (a, (segs, _)) = futures::join!(
        con.api.get(&r.session.caller, &path, r.inv),
        segment_rows(con, r),
    );
    if let Some(e) = a.error() {
        return pages::notice_page(&r.chrome.base, e.status, "Destination", &e.message);
    }
    let d = &a.body;
    let (notice, errors) = shown.unwrap_or_default();
    let view = DestView {
        id: text(&d["destinationId"]),
        account: text(&d["accountId"]),
        status: text(&d["status"]),
        labels: match text(&d["dataExportLabels"]) {
            l if l.is_empty() => "none".into(),
            l => l,
        },
        countries: text(&d["dataSourceCountry"]),
        ttl: text(&d["ttlSeconds"]),
        errors: d["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| match text(&e["segmentId"]) {
                s if s.is_empty() => text(&e["message"]),
                s => format!("{s}: {}", text(&e["message"])),
            })
            .collect(),
        mappings: d["mappings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(map_view)
            .collect(),
    };
    let page = DestinationPage {
        c: r.chrome.clone(),
        title: text(&d["name"]),
        notice,
        d: view,
        segments: segs.into_iter().map(|s| (s.id, s.name)).collect(),
        errors,
    };
    pages::render(200, &page)
}

/// `GET destinations/{id}/progress`: the bars, for progress.js.
pub async fn progress(con: &Console, r: &Req<'_>, id: &str) -> HttpResponse {
    let a = con
        .api
        .get(
            &r.session.caller,
            &format!("/destinations/{}", seg(id)),
            r.inv,
        )
        .await;
    if !a.ok() {
        return pages::json(a.status, &a.body);
    }
    let bars: Vec<Value> = a.body["mappings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let b = pages::bar(m);
            let live = matches!(m["status"].as_str(), Some("pending" | "active"))
                && m["backfill"]["state"].as_str() != Some("failed");
            json!({"segmentId": m["segmentId"], "status": m["status"], "audienceId": map_view(m).audience,
                "percent": b.percent, "label": b.label, "running": live && b.percent < 100})
        })
        .collect();
    pages::json(200, &json!({ "mappings": bars }))
}

async fn after(
    con: &Console,
    r: &Req<'_>,
    id: &str,
    a: Answer,
    done: &str,
    fee_seg: Option<&str>,
) -> HttpResponse {
    if a.ok() {
        return destination(con, r, id, Some((Notice::ok(done), Errors::default()))).await;
    }
    let (notice, mut errors) = refused(&a);
    if let Some(s) = fee_seg {
        // A fee error belongs to that mapping's fee form.
        let msg = a.error().map(|e| e.message).unwrap_or_default();
        errors.by_field.clear();
        errors.by_field.insert(format!("fees-{s}"), msg);
    }
    destination(con, r, id, Some((notice, errors))).await
}

/// `POST destinations/{id}/mappings`: `POST /destinations/{id}/mappings`.
pub async fn add_mapping(con: &Console, r: &Req<'_>, id: &str) -> HttpResponse {
    let mappings: Vec<Value> = forms::mapping(&r.form, "mappings[0]").into_iter().collect();
    let body = json!({ "mappings": mappings });
    let path = format!("/destinations/{}/mappings", seg(id));
    let a = con
        .api
        .call(&r.session.caller, "POST", &path, Some(&body), r.inv)
        .await;
    after(con, r, id, a, "Mapping added.", None).await
}

/// `POST destinations/{id}/mappings/{seg}/fees`: `PUT …/fees`.
pub async fn put_fees(con: &Console, r: &Req<'_>, id: &str, s: &str) -> HttpResponse {
    let body =
        json!({"audienceFees": forms::fees(&r.form.text("cpmCents"), &r.form.text("currency"))});
    let path = format!("/destinations/{}/mappings/{}/fees", seg(id), seg(s));
    let a = con
        .api
        .call(&r.session.caller, "PUT", &path, Some(&body), r.inv)
        .await;
    after(con, r, id, a, &format!("Fees of {s} saved."), Some(s)).await
}

/// `POST destinations/{id}/mappings/{seg}/remove`: `DELETE …/mappings/{seg}[?purge=true]`.
pub async fn remove_mapping(con: &Console, r: &Req<'_>, id: &str, s: &str) -> HttpResponse {
    let purge = r.form.checked("purge");
    let path = format!(
        "/destinations/{}/mappings/{}?purge={purge}",
        seg(id),
        seg(s)
    );
    let a = con
        .api
        .call(&r.session.caller, "DELETE", &path, None, r.inv)
        .await;
    after(con, r, id, a, &format!("Mapping {s} removed."), None).await
}

/// `POST destinations/{id}/delete`: `DELETE /destinations/{id}[?purge=true]`.
pub async fn delete_destination(con: &Console, r: &Req<'_>, id: &str) -> HttpResponse {
    let purge = r.form.checked("purge");
    let path = format!("/destinations/{}?purge={purge}", seg(id));
    let a = con
        .api
        .call(&r.session.caller, "DELETE", &path, None, r.inv)
        .await;
    if !a.ok() {
        return after(con, r, id, a, "", None).await;
    }
    let done = if a.status == 202 || a.body["status"] == "deleting" {
        "The destination is being deleted: its audiences are purged first."
    } else {
        "Destination deleted."
    };
    destinations(con, r, Some(((Notice::ok(done), Errors::default()), 200))).await
}
