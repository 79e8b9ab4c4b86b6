//! Golden error answers of the three API functions (oauth-callback, conversion-ingest,
//! segment-export): every route's error paths reachable without an Amazon fault, recorded as
//! status, headers and body in `tests/golden/<function>.json` (`adsync_tests::golden`), so that a
//! re-filing of the code provably changes no answer.
//!
//! Needs the local stack (`set -a; . .local/stack-<name>/stack.env; set +a`). Compare (default):
//! `cargo test -p adsync-tests --test golden_errors`; rewrite the files after an intended change:
//! `GOLDEN_UPDATE=1 cargo test -p adsync-tests --test golden_errors`.

use adsync_tests::golden;

#[tokio::test]
async fn oauth_callback_error_answers_are_unchanged() {
    let n = golden::oauth::run().await;
    assert!(n >= 70, "only {n} cases");
}

#[tokio::test]
async fn conversion_ingest_error_answers_are_unchanged() {
    let n = golden::conversions::run().await;
    assert!(n >= 110, "only {n} cases");
}

#[tokio::test]
async fn segment_export_error_answers_are_unchanged() {
    let n = golden::export::run().await;
    assert!(n >= 240, "only {n} cases");
}
