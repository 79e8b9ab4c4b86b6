use super::report::{done, totals};
use super::routes::{ROUTES, Route};
use super::send::amazon_errors;
use super::{EventResult, IngestReport, Status};
use crate::amazon::EventError;
use crate::domain::conversion::Reason;

#[test]
fn amazon_error_locations_are_made_relative_to_the_event() {
    let errs = amazon_errors(&[EventError {
        code: "FIELD_VALUE_IS_INVALID".into(),
        message: "bad".into(),
        field_location: Some("events[3].matchKeys[0].values".into()),
    }]);
    assert_eq!(errs[0].field, "matchKeys[0].values");
    assert_eq!(errs[0].message, "Amazon: FIELD_VALUE_IS_INVALID bad");
    assert_eq!(amazon_errors(&[])[0].reason, Reason::Amazon);
}

#[test]
fn status_code_is_200_only_when_everything_went_through() {
    let mk = |s: Vec<Status>| {
        let results: Vec<EventResult> =
            s.into_iter().enumerate().map(|(i, s)| done(i, s)).collect();
        IngestReport {
            account_id: "1".into(),
            totals: totals(&results),
            results,
        }
    };
    assert_eq!(
        mk(vec![Status::Accepted, Status::Duplicate]).status_code(),
        200
    );
    assert_eq!(
        mk(vec![Status::Accepted, Status::Parked]).status_code(),
        207
    );
    assert_eq!(mk(vec![Status::Rejected]).status_code(), 207);
}

#[test]
fn routes_under_api_gateway_and_cargo_lambda() {
    use crate::http::router::{Matched, route};
    for path in [
        "/accounts/12/conversions",
        "/lambda-url/conversion-ingest/accounts/12/conversions",
    ] {
        assert_eq!(
            route(ROUTES, "POST", path),
            Matched::Route(Route::Conversions, vec!["12"])
        );
        let r = route(ROUTES, "GET", path).refusal().unwrap();
        assert_eq!((r.status, r.headers["allow"].as_str()), (405, "POST"));
        assert_eq!(r.json_body()["error"]["message"], "allowed methods: POST");
    }
    let r = route(ROUTES, "POST", "/accounts/12").refusal().unwrap();
    assert_eq!(r.status, 404);
}
