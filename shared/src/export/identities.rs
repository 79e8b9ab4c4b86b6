//! `POST /accounts/{accountId}/identities`: hashed PII behind `EXTERNAL_USER_ID` members, uploaded
//! with `POST /dp/records/hashed/` so Amazon can match them.
//!
//! Every value is normalised and hashed by the conversion code (`domain::conversion::matchkey`,
//! one implementation, one table); a 64-hex value is taken as already hashed. Raw values never
//! leave this module's memory: bodies, parked messages and logs carry hashes only.
//!
//! Identities with the same `externalUserId` go out as one record with several `hashedRecords`.
//! Bodies are packed to ≤ 5 MB (a 413 halves the body and resends), paced to 10 requests/s by the
//! client. Within the request, Amazon calls use a short retry policy and no new body starts after
//! [`SEND_BUDGET`], so the answer stays well under API Gateway's 30 s. What still fails
//! transiently is parked (hashed records only) on `PARKED_IDENTITIES_QUEUE_URL` and answered
//! `parked`; the scheduled `redrive` task resends it ([`run_redrive`]). Amazon's refusal (other
//! 4xx) answers the identities of that body `rejected` with Amazon's message.

use super::ExportCtx;
use crate::amazon::privacy::{
    HashedFields, HashedRecord, MAX_RECORDS_BODY_BYTES, pack_records, records_body,
};
use crate::amazon::{AmazonClient, AmazonError, RetryPolicy};
use crate::domain::conversion::matchkey::{KeyHasher, KeyType, KeyValue};
use crate::http::error::respond;
use crate::http::{ApiError, ApiResult, HttpRequest, HttpResponse, Kind, parse_json_body};
use crate::runtime::Invocation;
use crate::store::accounts::IntegratedAccount;
use crate::store::parked::ParkedQueue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Most identities per request.
pub const MAX_IDENTITIES: usize = 10_000;
/// Largest request body (Lambda's synchronous payload limit).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// No new body starts after this much of the request's time went into sending.
pub const SEND_BUDGET: Duration = Duration::from_secs(10);
/// The queue variable of parked identity records.
pub const QUEUE_VAR: &str = "PARKED_IDENTITIES_QUEUE_URL";
pub const PARKED_KIND: &str = crate::parked_dlq::IDENTITIES_KIND;
/// Records per parked message (each ≤ ~700 bytes: well under SQS's 256 KB).
const PARK_CHUNK: usize = 200;

/// The PII fields: request name, match-key type, wire name.
const FIELDS: [(&str, KeyType); 8] = [
    ("email", KeyType::Email),
    ("phone", KeyType::Phone),
    ("firstName", KeyType::FirstName),
    ("lastName", KeyType::LastName),
    ("address", KeyType::Address),
    ("city", KeyType::City),
    ("state", KeyType::State),
    ("postalCode", KeyType::Postal),
];

/// Hashed records that could not be delivered yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedIdentities {
    pub kind: String,
    pub account_id: String,
    pub records: Vec<HashedRecord>,
    pub reason: String,
    /// Redrive attempts, age and delay (`store::parked_retry`); absent on older messages.
    #[serde(default)]
    pub retry: crate::store::parked_retry::RetryState,
}

#[derive(Debug, Serialize)]
struct FieldError {
    field: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct ItemResult {
    index: usize,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

fn valid_external_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn set(f: &mut HashedFields, name: &str, h: String) {
    let slot = match name {
        "email" => &mut f.email,
        "phone" => &mut f.phone,
        "firstName" => &mut f.first_name,
        "lastName" => &mut f.last_name,
        "address" => &mut f.address,
        "city" => &mut f.city,
        "state" => &mut f.state,
        _ => &mut f.postal_code,
    };
    *slot = Some(h);
}

/// Validates, normalises and hashes one identity (field errors name the field).
fn hash_identity(
    v: &Value,
    hasher: &mut KeyHasher,
) -> Result<(String, HashedFields), Vec<FieldError>> {
    let err = |field: &str, message: &str| FieldError {
        field: field.into(),
        message: message.into(),
    };
    let Some(obj) = v.as_object() else {
        return Err(vec![err("identity", "must be an object")]);
    };
    let mut errors = Vec::new();
    for k in obj.keys() {
        if k != "externalUserId" && !FIELDS.iter().any(|(n, _)| n == k) {
            errors.push(err(k, "is not a known field (externalUserId, email, phone, firstName, lastName, address, city, state, postalCode)"));
        }
    }
    let id = match obj.get("externalUserId") {
        Some(Value::String(s)) if valid_external_id(s) => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.push(err(
                "externalUserId",
                "must be 1-128 characters of A-Z a-z 0-9 _ -",
            ));
            None
        }
        _ => {
            errors.push(err("externalUserId", "is required (a string)"));
            None
        }
    };
    let mut fields = HashedFields::default();
    let mut dropped = Vec::new();
    let mut any = false;
    for (name, kind) in FIELDS {
        match obj.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match hasher.key_value(kind, s) {
                Some(KeyValue::Hashed(h)) => {
                    any = true;
                    set(&mut fields, name, String::from_utf8_lossy(&h).into_owned());
                }
                _ => dropped.push(name),
            },
            Some(_) => errors.push(err(name, "must be a string")),
        }
    }
    if !any && errors.is_empty() {
        errors.push(err(
            "identity",
            "needs at least one of email, phone, firstName, lastName, address, city, state, postalCode with a usable value",
        ));
        errors.extend(
            dropped
                .into_iter()
                .map(|n| err(n, "normalises to nothing (no letters or digits left)")),
        );
    }
    match id {
        Some(id) if errors.is_empty() => Ok((id, fields)),
        _ => Err(errors),
    }
}

/// The parking queue of identity records (`PARKED_IDENTITIES_QUEUE_URL`), on the SQS client of
/// the context's parked queue.
pub fn queue(ctx: &ExportCtx) -> Result<ParkedQueue, String> {
    let url = ctx
        .options
        .identities_queue
        .clone()
        .ok_or_else(|| crate::config::ConfigError::Missing(QUEUE_VAR).to_string())?;
    let dlq = ctx.parked.dead_letter().map(|d| d.queue_url().to_string());
    Ok(ctx.parked.sibling(url).with_dead_letter(dlq))
}

/// The request's Amazon client: two attempts, short timeouts (the answer must come in time).
fn request_client(ctx: &ExportCtx) -> AmazonClient {
    ctx.amazon.clone().with_retry_policy(RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        request_timeout: Duration::from_secs(6),
    })
}

/// Sends one body of records; a 413 halves it. `Err` carries the records not delivered.
pub(super) fn upload<'a>(
    amazon: &'a AmazonClient,
    a: &'a IntegratedAccount,
    records: Vec<HashedRecord>,
) -> futures::future::BoxFuture<'a, Result<u64, (AmazonError, Vec<HashedRecord>)>> {
    Box::pin(async move {
        match amazon
            .upload_hashed_records(&a.login(), a.scope(), records_body(&records))
            .await
        {
            Ok(_) => Ok(1),
            Err(AmazonError::PayloadTooLarge { .. }) if records.len() > 1 => {
                let mut first = records;
                let second = first.split_off(first.len() / 2);
                let n = upload(amazon, a, first).await?;
                Ok(1 + n + upload(amazon, a, second).await?)
            }
            Err(e) => Err((e, records)),
        }
    })
}

/// Parks records (chunked under SQS's message limit). Returns the records that could not be
/// parked either.
async fn park(
    q: &ParkedQueue,
    account_id: &str,
    records: Vec<HashedRecord>,
    reason: &str,
) -> usize {
    let mut lost = 0;
    for chunk in records.chunks(PARK_CHUNK) {
        let msg = ParkedIdentities {
            kind: PARKED_KIND.into(),
            account_id: account_id.into(),
            records: chunk.to_vec(),
            reason: reason.into(),
            retry: crate::store::parked_retry::RetryState::parked_at(crate::runtime::now_ms()),
        };
        if let Err(e) = q.park(&msg).await {
            tracing::error!(error = %e, "could not park identity records");
            lost += chunk.len();
        }
    }
    lost
}

/// `POST /accounts/{accountId}/identities` (the router checks the API key first).
pub async fn handle(
    ctx: &ExportCtx,
    account_id: &str,
    req: &HttpRequest,
    _inv: &Invocation,
) -> HttpResponse {
    respond(identities(ctx, account_id, req).await)
}

async fn identities(
    ctx: &ExportCtx,
    account_id: &str,
    req: &HttpRequest,
) -> ApiResult<HttpResponse> {
    let items = parse_body(req)?;
    let account = match ctx.accounts.get_account(account_id).await {
        Ok(found) => crate::export::errors::active_account(account_id, found)?,
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            return Err(ApiError::unavailable("store_unavailable", "try again"));
        }
    };
    let queue = queue(ctx).map_err(|e| ApiError::new(Kind::Internal, "misconfigured", e))?;
    let mut hasher = KeyHasher::new();
    let mut results = Vec::with_capacity(items.len());
    // externalId → (indexes, hashed records)
    let mut by_id: BTreeMap<String, (Vec<usize>, Vec<HashedFields>)> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let (status, errors) = match hash_identity(it, &mut hasher) {
            Ok((id, fields)) => {
                let e = by_id.entry(id).or_default();
                e.0.push(i);
                e.1.push(fields);
                ("accepted", Vec::new())
            }
            Err(errors) => ("rejected", errors),
        };
        results.push(ItemResult {
            index: i,
            status,
            message: None,
            errors,
        });
    }
    let mut index_of: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let records: Vec<HashedRecord> = by_id
        .into_iter()
        .map(|(id, (idx, hashed))| {
            index_of.insert(id.clone(), idx);
            HashedRecord {
                external_id: id,
                hashed_records: hashed,
            }
        })
        .collect();
    let sending = Sending {
        ctx,
        account: &account,
        account_id,
        queue: &queue,
        index_of: &index_of,
    };
    let (requests, parked) = sending.send_all(records, &mut results).await;
    Ok(answer(ctx, &results, requests, parked))
}

/// The body's `identities` array: 400 without one or when empty, 413 above [`MAX_IDENTITIES`].
fn parse_body(req: &HttpRequest) -> ApiResult<Vec<Value>> {
    let body: Value = parse_json_body(req, MAX_REQUEST_BYTES)?;
    let items = match body {
        Value::Object(mut m) => match m.remove("identities") {
            Some(Value::Array(items)) => Some(items),
            _ => None,
        },
        _ => None,
    };
    let Some(items) = items else {
        return Err(ApiError::invalid(
            "identities",
            "the body must be an object with an \"identities\" array",
        ));
    };
    if items.is_empty() || items.len() > MAX_IDENTITIES {
        let kind = if items.is_empty() {
            Kind::BadRequest
        } else {
            Kind::PayloadTooLarge
        };
        let message = format!(
            "identities must hold 1 to {MAX_IDENTITIES} entries (got {})",
            items.len()
        );
        return Err(ApiError::new(kind, "invalid_request", message).at("identities"));
    }
    Ok(items)
}

/// What sending one request's records needs.
struct Sending<'a> {
    ctx: &'a ExportCtx,
    account: &'a IntegratedAccount,
    account_id: &'a str,
    queue: &'a ParkedQueue,
    /// externalId → the items it came from.
    index_of: &'a BTreeMap<String, Vec<usize>>,
}

impl Sending<'_> {
    /// Uploads the records body by body within [`SEND_BUDGET`]; returns the requests made and
    /// the records parked, and sets the items' lines of bodies that failed.
    async fn send_all(
        &self,
        records: Vec<HashedRecord>,
        results: &mut [ItemResult],
    ) -> (u64, usize) {
        let amazon = request_client(self.ctx);
        let started = Instant::now();
        let (mut requests, mut parked) = (0u64, 0usize);
        for body in pack_records(records, MAX_RECORDS_BODY_BYTES) {
            let outcome = if started.elapsed() > SEND_BUDGET {
                Err((AmazonError::Timeout, body))
            } else {
                upload(&amazon, self.account, body).await
            };
            match outcome {
                Ok(n) => requests += n,
                Err((e, failed)) => parked += self.failed(e, failed, results).await,
            }
        }
        (requests, parked)
    }

    /// Answers a body Amazon did not take: `rejected` for its refusal, else parked (or
    /// `failed` when parking fails too). Returns the records parked.
    async fn failed(
        &self,
        e: AmazonError,
        failed: Vec<HashedRecord>,
        results: &mut [ItemResult],
    ) -> usize {
        let mark = |results: &mut [ItemResult], status: &'static str, msg: &str| {
            for r in &failed {
                for &i in self.index_of.get(&r.external_id).into_iter().flatten() {
                    results[i].status = status;
                    results[i].message = Some(msg.to_string());
                }
            }
        };
        if matches!(
            e,
            AmazonError::Rejected { .. } | AmazonError::AccountNotFound { .. }
        ) {
            mark(results, "rejected", &e.user_message());
            return 0;
        }
        if matches!(e, AmazonError::ReauthorizationRequired)
            && let Err(se) = self
                .ctx
                .accounts
                .mark_reauthorization_required(&self.account.token_secret)
                .await
        {
            tracing::error!(error = %se, "could not mark the accounts for reauthorization");
        }
        let n = failed.len();
        let lost = park(
            self.queue,
            self.account_id,
            failed.clone(),
            &e.user_message(),
        )
        .await;
        if lost == 0 {
            mark(
                results,
                "parked",
                "Amazon could not take it now; parked and redriven later",
            );
            n
        } else {
            mark(
                results,
                "failed",
                "could not be delivered or parked; send it again",
            );
            0
        }
    }
}

/// The 200 (or 207 unless every item was accepted) answer, and its metrics.
fn answer(ctx: &ExportCtx, results: &[ItemResult], requests: u64, parked: usize) -> HttpResponse {
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let accepted = count("accepted");
    let mut m = crate::telemetry::Metrics::new(ctx.metrics_fn);
    m.count("IdentitiesAccepted", accepted as u64)
        .count("IdentitiesRejected", count("rejected") as u64)
        .count("IdentityRecordsParked", parked as u64);
    m.emit();
    let status = if accepted == results.len() { 200 } else { 207 };
    HttpResponse::json(
        status,
        &json!({
            "results": results,
            "totals": {"received": results.len(), "accepted": accepted, "rejected": count("rejected"),
                       "parked": count("parked"), "failed": count("failed")},
            "delivery": {"requests": requests, "parkedRecords": parked},
        }),
    )
}

pub use super::identities_redrive::{run_redrive, run_redrive_with};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_hash_with_the_conversion_code_and_name_bad_fields() {
        let mut h = KeyHasher::new();
        let pre = "A".repeat(64);
        let (id, f) = hash_identity(
            &json!({"externalUserId": "u_1", "email": " Jane.Doe@Example.com ", "phone": pre}),
            &mut h,
        )
        .unwrap();
        assert_eq!(id, "u_1");
        let expect = |k, v| match KeyHasher::new().key_value(k, v) {
            Some(KeyValue::Hashed(x)) => String::from_utf8_lossy(&x).into_owned(),
            _ => panic!(),
        };
        assert_eq!(
            f.email.unwrap(),
            expect(KeyType::Email, "jane.doe@example.com")
        );
        assert_eq!(
            f.phone.unwrap(),
            "a".repeat(64),
            "pre-hashed kept, lowercased"
        );
        let errs = hash_identity(
            &json!({"externalUserId": "a b", "email": 5, "mail": "x"}),
            &mut h,
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["mail", "externalUserId", "email"]);
        let errs =
            hash_identity(&json!({"externalUserId": "u", "firstName": "!!"}), &mut h).unwrap_err();
        assert_eq!(errs[0].field, "identity");
        assert_eq!(errs[1].field, "firstName");
    }
}
