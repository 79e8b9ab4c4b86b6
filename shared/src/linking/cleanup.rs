//! The linking function's schedule (`{"task":"cleanup"}`): token secrets of consents that were
//! never confirmed. A consent stores the login's refresh token at once (the code must be
//! exchanged within minutes), but the user may never pick an advertiser; after
//! [`ABANDONED_AFTER`] such a connection is closed (`failed`, reason `abandoned`) and its token
//! secret deleted, unless an account uses it.
//!
//! It scans the accounts table for connection items under this deployment's token-secret prefix
//! that still name a secret and never reached `linked`, within the invocation's deadline.

use super::Linking;
use crate::amazon::{LoginRef, Region};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, is_conditional_failure, now_rfc3339, s};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use std::time::Duration;

/// How long a consent may stay unconfirmed before its token secret is deleted.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Stop this long before the Lambda deadline.
const MARGIN: Duration = Duration::from_secs(5);

/// What one cleanup run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupSummary {
    pub scanned: usize,
    pub secrets_deleted: usize,
    pub connections_closed: usize,
    pub failures: usize,
    /// The deadline came first; the next run goes on.
    pub incomplete: bool,
}

/// An abandoned connection as scanned.
struct Abandoned {
    connection_id: String,
    secret: String,
    region: Region,
}

fn get<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> Option<&'a str> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

impl Linking {
    /// Closes the connections created before `older_than` ago that were consented (or failed)
    /// but never linked, deleting their token secrets.
    pub async fn cleanup(&self, inv: &Invocation, older_than: Duration) -> CleanupSummary {
        let cutoff = (chrono::Utc::now()
            - chrono::Duration::from_std(older_than).unwrap_or_default())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut summary = CleanupSummary::default();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            if inv.remaining() < MARGIN {
                summary.incomplete = true;
                break;
            }
            let page = match self.scan_page(&cutoff, start.take()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cleanup scan failed");
                    summary.failures += 1;
                    summary.incomplete = true;
                    break;
                }
            };
            summary.scanned += page.0.len();
            for a in page.0 {
                self.close_abandoned(&a, &mut summary).await;
            }
            match page.1 {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        tracing::info!(
            scanned = summary.scanned,
            secrets_deleted = summary.secrets_deleted,
            connections_closed = summary.connections_closed,
            failures = summary.failures,
            "cleanup of abandoned consents"
        );
        summary
    }

    #[allow(clippy::type_complexity)]
    async fn scan_page(
        &self,
        cutoff: &str,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<(Vec<Abandoned>, Option<HashMap<String, AttributeValue>>), StoreError> {
        let out = self
            .accounts
            .client()
            .scan()
            .table_name(self.accounts.table())
            .filter_expression(
                "begins_with(pk, :conn) AND begins_with(tokenSecret, :prefix) \
                 AND #st <> :linked AND createdAt < :cutoff",
            )
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":conn", s("CONN#"))
            .expression_attribute_values(":prefix", s(&self.config.token_secret_prefix))
            .expression_attribute_values(":linked", s("linked"))
            .expression_attribute_values(":cutoff", s(cutoff))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| aws_error("scan connections", e))?;
        let found = out
            .items()
            .iter()
            .filter_map(|item| {
                Some(Abandoned {
                    connection_id: get(item, "connectionId")?.to_string(),
                    secret: get(item, "tokenSecret")?.to_string(),
                    region: Region::parse(get(item, "region")?)?,
                })
            })
            .collect();
        Ok((found, out.last_evaluated_key))
    }

    async fn close_abandoned(&self, a: &Abandoned, summary: &mut CleanupSummary) {
        let login = LoginRef {
            region: a.region,
            secret_name: a.secret.clone(),
        };
        // Marked first, so a confirm racing the cleanup either links (and the mark fails) or
        // finds the connection failed.
        match self.mark_abandoned(a).await {
            Ok(true) => summary.connections_closed += 1,
            Ok(false) => return,
            Err(e) => {
                tracing::error!(connection_id = %a.connection_id, error = %e, "cannot close an abandoned connection");
                summary.failures += 1;
                return;
            }
        }
        if self.release_login(&login).await {
            summary.secrets_deleted += 1;
        }
    }

    /// Not linked → failed (`abandoned`), forgetting the secret's name. `false` if it was
    /// linked (or changed) in between.
    async fn mark_abandoned(&self, a: &Abandoned) -> Result<bool, StoreError> {
        let res = self
            .accounts
            .client()
            .update_item()
            .table_name(self.accounts.table())
            .key("pk", s(format!("CONN#{}", a.connection_id)))
            .key("sk", s("CONNECTION"))
            .update_expression(
                "SET #st = :failed, failure = :reason, updatedAt = :now REMOVE tokenSecret, advertisers",
            )
            .condition_expression("#st <> :linked AND tokenSecret = :secret")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":failed", s("failed"))
            .expression_attribute_values(":linked", s("linked"))
            .expression_attribute_values(":reason", s("abandoned"))
            .expression_attribute_values(":secret", s(&a.secret))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(aws_error("close abandoned connection", e)),
        }
    }
}
