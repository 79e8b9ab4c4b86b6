//! Erasure jobs: the durable, checkpointed work behind `POST /privacy/deletions`.
//!
//! A job erases up to 1 000 devices in four steps, each checkpointed in the job item
//! (`store::erasures`) before the next begins, under a lease (two invocations never work one job;
//! a dead invocation's job is taken over when its lease expires):
//!
//! 1. **tombstones**: `ERASED#<sha256(<idType>-<deviceId>)>` with the request time, so a
//!    qualification older than the request is answered `stale` and a newer one re-adds
//!    (`privacy::upsert_unless_erased`, called by the qualification path).
//! 2. **ledger**: a consistent, paged scan of the ledger (cursor saved after every page) finds the
//!    devices' rows in every segment, registered or not; each row at or before the request time
//!    is recorded as *found* (segment + device hash), then deleted.
//! 3. **audiences**: the devices' dirty marks in the segments' backfill jobs are deleted; per
//!    account, one `remove` patch per device carrying every audience (any mapping status) of
//!    the segments it was found in, 413 split; an account needing
//!    reauthorization waits (visible), a retryable failure is retried on the next run.
//! 4. **users**: one `PATCH /v2/dp/users` (`DELETE`, ≤ 1 000 users) per linked advertiser, each
//!    checkpointed on its own; an advertiser whose account is not active waits (visible).
//!
//! When every step is done the found rows are deleted and the raw device ids leave the job item
//! (`REMOVE devices`); from then on only hashes remain. Logs and the job's progress carry hashes
//! only, and Amazon's error messages are redacted before they are stored.

use super::ExportCtx;
pub use super::erasure_progress::*;
use crate::amazon::AmazonError;
use crate::amazon::privacy::{MAX_DELETION_USERS, UserId, deletion_body};
use crate::domain::audience::{Batcher, Change, PatchOp, device_key, group, split_body};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::erasures::{ErasureStore, device_hash, tombstone_hashes};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Knobs of an erasure run.
#[derive(Clone, Debug)]
pub struct ErasureOptions {
    pub lease: Duration,
    /// Stop starting steps or pages when less than this is left.
    pub safety_margin: Duration,
    /// Ledger rows read per scan page.
    pub scan_page: i32,
    /// Tests: stop (as if the process died, lease kept) right after this step's checkpoint.
    pub crash_after: Option<&'static str>,
}

impl Default for ErasureOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(120),
            safety_margin: Duration::from_secs(20),
            scan_page: 1000,
            crash_after: None,
        }
    }
}

/// The erasure store of the export context (tombstones in the ledger table, jobs beside the
/// backfill jobs).
pub fn store(ctx: &ExportCtx) -> ErasureStore {
    ErasureStore::new(
        ctx.ledger.client().clone(),
        ctx.ledger.table().to_string(),
        ctx.destinations.table().to_string(),
    )
}

/// Runs every unfinished job until the deadline margin (scheduled `backfill` task).
pub async fn run_erasures(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &ErasureOptions,
) -> Result<Value, String> {
    let st = store(ctx);
    let ids = st.active_jobs(50).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for id in ids {
        if inv.remaining() <= opts.safety_margin {
            break;
        }
        let status = run_job(ctx, &st, &id, inv, opts)
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        out.push(json!({"deletionId": id, "status": status}));
    }
    Ok(json!({ "jobs": out }))
}

/// Works one job as far as time allows; returns its status (`busy` when another invocation
/// holds it).
pub async fn run_job(
    ctx: &ExportCtx,
    st: &ErasureStore,
    id: &str,
    inv: &Invocation,
    opts: &ErasureOptions,
) -> Result<String, String> {
    let e = |e: StoreError| e.to_string();
    let owner = inv.request_id.clone();
    let now = chrono::Utc::now().timestamp_millis();
    let until = now + opts.lease.as_millis() as i64;
    if !st.lease(id, &owner, now, until).await.map_err(e)? {
        return Ok("busy".into());
    }
    let stored = st.get_job(id).await.map_err(e)?.ok_or("job vanished")?;
    let mut doc: ErasureDoc = serde_json::from_str(&stored.doc).map_err(|x| x.to_string())?;
    if doc.status == "done" {
        return Ok(doc.status);
    }
    let devices: RawDevices = stored
        .devices
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|x| x.to_string())?
        .ok_or("an unfinished erasure job without its devices")?;
    let mut run = JobRun {
        ctx,
        st,
        id,
        owner: &owner,
        devices: &devices,
        keys: devices.iter().map(|(t, d)| device_key(*t, d)).collect(),
        opts,
        inv,
    };
    let status = run.steps(&mut doc).await?;
    // Only a run that ended normally gives its lease back; a crash keeps it until it expires.
    st.release(id, &owner).await.map_err(e)?;
    Ok(status)
}

struct JobRun<'a> {
    ctx: &'a ExportCtx,
    st: &'a ErasureStore,
    id: &'a str,
    owner: &'a str,
    devices: &'a RawDevices,
    keys: Vec<String>,
    opts: &'a ErasureOptions,
    inv: &'a Invocation,
}

impl JobRun<'_> {
    async fn save(&self, doc: &mut ErasureDoc, finished: bool) -> Result<(), String> {
        doc.updated_at = crate::store::dynamo::now_rfc3339();
        let json = serde_json::to_string(doc).map_err(|e| e.to_string())?;
        let state = if finished {
            "done"
        } else {
            doc.status.as_str()
        };
        self.st
            .save(self.id, self.owner, &json, state, finished)
            .await
            .map_err(|e| e.to_string())
    }

    fn crash(&self, step: &str) -> Result<(), String> {
        match self.opts.crash_after {
            Some(s) if s == step => Err(format!("injected crash after step {step}")),
            _ => Ok(()),
        }
    }

    fn out_of_time(&self) -> bool {
        self.inv.remaining() <= self.opts.safety_margin
    }

    async fn steps(&mut self, doc: &mut ErasureDoc) -> Result<String, String> {
        if doc.steps.tombstones.state != "done" {
            for hash in self.keys.iter().flat_map(|k| tombstone_hashes(k)) {
                self.st
                    .put_tombstone(&hash, doc.requested_at_ms, self.id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            doc.steps.tombstones = CountStep {
                state: "done".into(),
                done: self.keys.len() as u64,
            };
            self.save(doc, false).await?;
            self.crash("tombstones")?;
        }
        if doc.steps.ledger.state != "done" {
            if !self.ledger_step(doc).await? {
                return Ok(doc.status.clone());
            }
            self.crash("ledger")?;
        }
        if doc.steps.audiences.state != "done" && !self.out_of_time() {
            self.audiences_step(doc).await.map_err(|e| e.to_string())?;
            self.save(doc, false).await?;
            self.crash("audiences")?;
        }
        if doc.steps.users.state != "done" && !self.out_of_time() {
            self.users_step(doc).await.map_err(|e| e.to_string())?;
            self.save(doc, false).await?;
            self.crash("users")?;
        }
        let all_done = [&doc.steps.audiences.state, &doc.steps.users.state]
            .iter()
            .all(|s| *s == "done");
        if all_done {
            self.st
                .delete_found(self.id)
                .await
                .map_err(|e| e.to_string())?;
            doc.status = "done".into();
            doc.finished_at = Some(crate::store::dynamo::now_rfc3339());
            self.save(doc, true).await?;
            tracing::info!(
                deletion_id = self.id,
                devices = self.keys.len(),
                "erasure done"
            );
        } else {
            doc.status = "waiting".into();
            self.save(doc, false).await?;
        }
        Ok(doc.status.clone())
    }

    /// Pages through the ledger; true when the scan is complete.
    async fn ledger_step(&self, doc: &mut ErasureDoc) -> Result<bool, String> {
        let index: HashMap<&str, usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        doc.steps.ledger.state = "running".into();
        loop {
            if self.out_of_time() {
                self.save(doc, false).await?;
                return Ok(false);
            }
            let e = |e: StoreError| e.to_string();
            let (rows, next) = self
                .st
                .scan_ledger(doc.steps.ledger.cursor.clone(), self.opts.scan_page)
                .await
                .map_err(e)?;
            let l = &mut doc.steps.ledger;
            l.rows_scanned += rows.len() as u64;
            let mut found = Vec::new();
            for r in rows
                .into_iter()
                .filter(|r| index.contains_key(r.device.as_str()))
            {
                if r.ts_ms <= doc.requested_at_ms {
                    found.push(r);
                } else {
                    l.rows_newer_kept += 1;
                }
            }
            // Found before deleted: a crash in between finds the row again, never loses it.
            let marks: Vec<(String, String)> = found
                .iter()
                .map(|r| (r.segment_id.clone(), device_hash(&r.device)))
                .collect();
            self.st.put_found(self.id, &marks).await.map_err(e)?;
            for r in &found {
                let cond = "ts <= :t";
                if self
                    .st
                    .delete_ledger_row(&r.segment_id, &r.device, cond, doc.requested_at_ms)
                    .await
                    .map_err(e)?
                {
                    l.rows_removed += 1;
                }
            }
            l.cursor = next;
            if l.cursor.is_none() {
                l.state = "done".into();
            }
            let now = chrono::Utc::now().timestamp_millis();
            let until = now + self.opts.lease.as_millis() as i64;
            if !self
                .st
                .lease(self.id, self.owner, now, until)
                .await
                .map_err(e)?
            {
                return Err("the erasure job's lease was lost".into());
            }
            self.save(doc, false).await?;
            if doc.steps.ledger.state == "done" {
                return Ok(true);
            }
        }
    }

    async fn audiences_step(&self, doc: &mut ErasureDoc) -> Result<(), StoreError> {
        let by_hash: HashMap<String, usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (device_hash(k), i))
            .collect();
        let mut per_seg: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (seg, hash) in self.st.found(self.id).await? {
            if let Some(i) = by_hash.get(&hash) {
                per_seg.entry(seg).or_default().insert(*i);
            }
        }
        // account → changes (every audience of every mapping of the segment, any status).
        let mut per_account: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        let mut account_of: HashMap<String, Option<String>> = HashMap::new();
        for (seg, idxs) in &per_seg {
            for m in self.ctx.destinations.mappings_for_segment(seg).await? {
                for &i in idxs {
                    let (d, k) = (&m.destination_id, &self.keys[i]);
                    self.st.delete_dirty_mark(d, seg, k).await?;
                }
                let Some(audience_id) = m.audience_id else {
                    continue;
                };
                if !account_of.contains_key(&m.destination_id) {
                    let d = self
                        .ctx
                        .destinations
                        .get_destination(&m.destination_id)
                        .await?;
                    account_of.insert(m.destination_id.clone(), d.map(|d| d.account_id));
                }
                let Some(Some(account)) = account_of.get(&m.destination_id) else {
                    continue;
                };
                let changes = per_account.entry(account.clone()).or_default();
                for &i in idxs {
                    changes.push(Change {
                        device: self.keys[i].clone(),
                        op: PatchOp::Remove,
                        audience_id,
                        consent: None,
                    });
                }
            }
        }
        for (account_id, changes) in per_account {
            let mut p = doc
                .steps
                .audiences
                .targets
                .remove(&account_id)
                .unwrap_or_else(|| TargetProgress {
                    state: "pending".into(),
                    ..Default::default()
                });
            if !p.settled() && !self.out_of_time() {
                let mut ids: Vec<i64> = changes.iter().map(|c| c.audience_id).collect();
                ids.sort_unstable();
                ids.dedup();
                p.audiences = ids;
                let account = self.ctx.accounts.get_account(&account_id).await?;
                self.remove_from_audiences(&mut p, account, changes).await;
                if let Some(err) = &p.error {
                    doc.note(format!("audiences of account {account_id}: {err}"));
                }
            }
            doc.steps.audiences.targets.insert(account_id, p);
        }
        doc.steps.audiences.state = step_state(&doc.steps.audiences);
        Ok(())
    }

    async fn remove_from_audiences(
        &self,
        p: &mut TargetProgress,
        account: Option<IntegratedAccount>,
        changes: Vec<Change>,
    ) {
        let Some(a) = self.usable(p, account) else {
            return;
        };
        let mut batcher: Batcher<()> = Batcher::default();
        let mut bodies = Vec::new();
        for patch in group(changes) {
            if let Ok(Some(b)) = batcher.push(&patch, ()) {
                bodies.push(b.body);
            }
        }
        bodies.extend(batcher.take().map(|b| b.body));
        for body in bodies {
            match send_split(self.ctx, &a, body).await {
                Ok(n) => p.requests += n,
                Err(e) => return self.failed(p, &a, e).await,
            }
        }
        p.state = "done".into();
        p.error = None;
    }

    async fn users_step(&self, doc: &mut ErasureDoc) -> Result<(), StoreError> {
        if doc.steps.users.targets.is_empty() {
            // Every linked advertiser at the time the step first runs.
            for a in self.ctx.accounts.list_accounts().await? {
                doc.steps.users.targets.insert(
                    a.account_id.clone(),
                    TargetProgress {
                        advertiser_id: a.advertiser_id,
                        state: "pending".into(),
                        ..Default::default()
                    },
                );
            }
        }
        let ids: Vec<String> = doc.steps.users.targets.keys().cloned().collect();
        for account_id in ids {
            let Some(mut p) = doc.steps.users.targets.remove(&account_id) else {
                continue;
            };
            if !p.settled() && !self.out_of_time() {
                let account = self.ctx.accounts.get_account(&account_id).await?;
                self.delete_users(&mut p, account, doc.requested_at_ms)
                    .await;
                if let Some(err) = &p.error {
                    doc.note(format!("user deletion for advertiser {account_id}: {err}"));
                }
            }
            doc.steps.users.targets.insert(account_id, p);
        }
        doc.steps.users.state = step_state(&doc.steps.users);
        Ok(())
    }

    async fn delete_users(
        &self,
        p: &mut TargetProgress,
        account: Option<IntegratedAccount>,
        requested_at_ms: i64,
    ) {
        let Some(a) = self.usable(p, account) else {
            return;
        };
        for chunk in self.devices.chunks(MAX_DELETION_USERS) {
            let users: Vec<UserId<'_>> = chunk
                .iter()
                .map(|(t, v)| UserId {
                    kind: t.as_str(),
                    value: v,
                })
                .collect();
            let body = deletion_body(&users, a.advertiser_id, requested_at_ms);
            match self
                .ctx
                .amazon
                .delete_users(&a.login(), a.scope(), body)
                .await
            {
                Ok(rid) => {
                    p.requests += 1;
                    p.request_id = rid;
                }
                Err(e) => return self.failed(p, &a, e).await,
            }
        }
        p.state = "done".into();
        p.error = None;
    }

    /// The account when it can be called now; otherwise records why not (waiting or skipped).
    fn usable(
        &self,
        p: &mut TargetProgress,
        account: Option<IntegratedAccount>,
    ) -> Option<IntegratedAccount> {
        if let Some(a) = &account {
            p.advertiser_id = a.advertiser_id;
        }
        match account {
            Some(a) if a.status == AccountStatus::Active => Some(a),
            Some(a) if a.status == AccountStatus::ReauthorizationRequired => {
                p.state = "waiting".into();
                p.error = Some(AmazonError::ReauthorizationRequired.user_message());
                None
            }
            _ => {
                p.state = "skipped".into();
                p.error =
                    Some("the account is no longer linked; nothing can be sent for it".into());
                None
            }
        }
    }

    async fn failed(&self, p: &mut TargetProgress, a: &IntegratedAccount, e: AmazonError) {
        p.error = Some(redact(&e.user_message(), self.devices));
        p.state = match &e {
            AmazonError::ReauthorizationRequired => {
                if let Err(se) = self
                    .ctx
                    .accounts
                    .mark_reauthorization_required(&a.token_secret)
                    .await
                {
                    tracing::error!(error = %se, "could not mark the accounts for reauthorization");
                }
                "waiting"
            }
            e if e.is_retryable() => "retrying",
            _ => "failed",
        }
        .into();
        tracing::warn!(deletion_id = self.id, account_id = %a.account_id, state = %p.state, "erasure call failed");
    }
}

/// Sends one patch body; a 413 splits it. Returns the requests made.
fn send_split<'a>(
    ctx: &'a ExportCtx,
    a: &'a IntegratedAccount,
    body: Vec<u8>,
) -> futures::future::BoxFuture<'a, Result<u64, AmazonError>> {
    Box::pin(async move {
        match ctx
            .amazon
            .patch_audiences(&a.login(), a.scope(), body.clone())
            .await
        {
            Ok(_) => Ok(1),
            Err(AmazonError::PayloadTooLarge {
                message,
                request_id,
            }) => {
                let Some((x, y)) = split_body(&body) else {
                    return Err(AmazonError::Rejected {
                        status: 413,
                        message,
                        request_id,
                    });
                };
                Ok(1 + send_split(ctx, a, x).await? + send_split(ctx, a, y).await?)
            }
            Err(e) => Err(e),
        }
    })
}
