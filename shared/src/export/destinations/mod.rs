//! The metadata side of segment export: segments, destinations, segment mappings (one Amazon Data
//! Provider audience each), audience fees and the data export labels / controls check.
//!
//! Routes (API key checked by the router before any of these run):
//!
//! - `PUT /segments/{segmentId}`, `GET /segments/{segmentId}`
//! - `POST /destinations`, `GET /destinations`, `GET /destinations/{id}`, `PATCH /destinations/{id}`
//! - `POST /destinations/{id}/mappings`, `DELETE /destinations/{id}/mappings/{segmentId}`
//! - `PUT /destinations/{id}/mappings/{segmentId}/fees`
//!
//! Audience creation is paced (Amazon takes one metadata call per second per LwA client): a new
//! mapping is stored `pending` and queued; once its audience exists the mapping turns `active`
//! and its historical backfill is queued (`members::start_backfill`). Two callers do that work:
//!
//! - the creating request itself (`POST /destinations`, `POST …/mappings`), within a bounded slice
//!   of its own time ([`super::InlineWork`], `ADSYNC_INLINE_WORK_MS`, never past the Lambda
//!   deadline minus the backfill safety margin): it creates *its own* queued audiences, then runs
//!   the backfill jobs of its mappings that are active (`members::run_backfill_for`);
//! - the scheduled `{"task":"backfill"}` invocation ([`create_pending_audiences`], then
//!   `members::run_backfill`), which takes whatever is still queued or checkpointed.
//!
//! Both go through `audiences::create_one`: a claim (conditional write) so one audience is created per
//! mapping whoever races, and a metadata slot reserved in DynamoDB so every process together stays
//! at one call per second. The request only takes a slot that falls within its slice, and its
//! Amazon calls make a single attempt, so its answer time stays bounded. The answer (202) shows
//! each mapping as it stands when the request answers: `pending` while its audience waits,
//! `active` with `audienceId` and backfill progress once created.
//!
//! Files, by job: `requests` (the bodies, as serde structs, and their checks in a fixed order)
//! and `fields` (single-field checks, each error naming its field with indices); `views` (JSON);
//! `segments`, `routes` (destinations), `mappings` and `fees` (the route handlers); `pacing`
//! (metadata slots), `audiences` (creation) and `inline` (a creating request's slice). Errors are
//! `crate::http::ApiError`s built by `super::errors`.

mod audiences;
mod fees;
mod fields;
mod inline;
mod mapping_requests;
mod mappings;
mod pacing;
mod requests;
mod routes;
mod segments;
#[cfg(test)]
mod tests;
mod views;

pub use audiences::{CreationSummary, create_pending_audiences};
pub use fees::put_fees;
pub use fields::{DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, parse_fees, valid_segment_id};
pub use mappings::{add_mappings, remove_mapping};
pub use routes::{create_destination, get_destination, list_destinations, patch_destination};
pub use segments::{get_segment, put_segment};

pub(super) use super::errors::invalid;
pub(super) use audiences::audience_description;
pub(super) use fields::parse_countries;
pub(super) use mappings::remove;
pub(super) use pacing::{pace_by, paced_call_done};
pub(super) use routes::find_destination;
pub(super) use views::mapping_view;
