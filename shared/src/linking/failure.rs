//! The failure pages of the browser flow: what each failure says and its status.

use crate::amazon::{AmazonError, LwaError};
use crate::http::html::Tone;
use crate::http::{HttpResponse, Kind, html};
use crate::store::accounts::ConsumeError;

pub(super) fn random_failure() -> Failure {
    Failure::new(
        Kind::Unavailable,
        "adsync could not create a secure link",
        "The server's random number generator did not answer, so no sign-in value could be made.",
        "Try again in a minute. If it keeps failing, check the oauth-callback function's logs.",
    )
}

pub(super) fn browser_failure() -> Failure {
    Failure::new(
        Kind::Forbidden,
        "This account list belongs to another browser",
        "The account list can only be used in the browser that signed in with Amazon (it carries a cookie \
         set at sign-in), and this request did not carry it.",
        "Open the authorizeUrl of the connection in this browser, or start again with POST /connections.",
    )
}

/// What a failed browser step answers: its kind (which alone decides the status, as for
/// [`crate::http::ApiError`]), title, what happened, what to do.
pub(super) struct Failure {
    kind: Kind,
    title: &'static str,
    what: String,
    todo: String,
}

impl Failure {
    pub(super) fn new(
        kind: Kind,
        title: &'static str,
        what: impl Into<String>,
        todo: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            what: what.into(),
            todo: todo.into(),
        }
    }

    /// The HTTP status of the page.
    pub(super) fn status(&self) -> u16 {
        self.kind.status()
    }

    pub(super) fn page(&self, reference: Option<&str>) -> HttpResponse {
        let tone = if self.status() >= 500 {
            Tone::Warn
        } else {
            Tone::Error
        };
        html::message(
            self.status(),
            tone,
            self.title,
            &self.what,
            &self.todo,
            reference,
        )
    }
}

pub(super) const START_AGAIN: &str = "Start again: create a new connection (POST /connections with the region) and open its \
                           authorizeUrl in this browser.";

pub(super) fn store_failure(what: &str) -> Failure {
    Failure::new(
        Kind::Unavailable,
        "adsync could not save its progress",
        format!("adsync could not {what} (its database or secret store did not answer)."),
        "Try again in a minute. If it keeps failing, check the oauth-callback function's logs.",
    )
}

pub(super) fn consume_failure(kind: &str, e: &ConsumeError) -> Failure {
    match (kind, e) {
        ("state", ConsumeError::Unknown) => Failure::new(
            Kind::BadRequest,
            "This sign-in link is not valid",
            "The sign-in answer did not carry a state adsync issued, so it cannot be trusted (it may have been forged or mistyped).",
            START_AGAIN,
        ),
        ("state", ConsumeError::Expired) => Failure::new(
            Kind::Gone,
            "This sign-in link has expired",
            "The consent link is valid for 10 minutes after the connection is created, and that time has passed.",
            START_AGAIN,
        ),
        ("state", ConsumeError::Used) => Failure::new(
            Kind::Conflict,
            "This sign-in link was already used",
            "Each consent link works once, and this one was already used (for example by reloading the page or pressing Back).",
            "If the account list was shown, go on from there; otherwise start again: create a new connection \
             (POST /connections) and open its authorizeUrl.",
        ),
        ("form", ConsumeError::Unknown) => Failure::new(
            Kind::Forbidden,
            "This form could not be verified",
            "The confirmation did not carry a form token adsync issued, so it was not accepted.",
            "Open the account list again from the link adsync showed you and press Confirm there, or start again with POST /connections.",
        ),
        ("form", ConsumeError::Expired) => Failure::new(
            Kind::Gone,
            "This form has expired",
            "The account list is valid for 30 minutes after you signed in with Amazon, and that time has passed.",
            START_AGAIN,
        ),
        ("view", ConsumeError::Unknown) => Failure::new(
            Kind::NotFound,
            "This account list does not exist",
            "The link does not point to an account list adsync issued.",
            START_AGAIN,
        ),
        ("view", ConsumeError::Expired) => Failure::new(
            Kind::Gone,
            "This account list has expired",
            "The account list is valid for 30 minutes after you signed in with Amazon, and that time has passed.",
            START_AGAIN,
        ),
        (_, ConsumeError::Used) => Failure::new(
            Kind::Conflict,
            "This form was already used",
            "This confirmation form was already used.",
            "Go back, reload the account list and press Confirm again.",
        ),
        (_, ConsumeError::Store(_)) => store_failure("check the link"),
        (_, _) => Failure::new(
            Kind::BadRequest,
            "This link is not valid",
            "The link is not valid.",
            START_AGAIN,
        ),
    }
}

/// The OAuth error codes LwA may send back, with our words for them.
pub(super) fn provider_error(error: &str) -> Failure {
    match error {
        "access_denied" => Failure::new(
            Kind::Forbidden,
            "Access was not granted",
            "The Amazon sign-in was cancelled or access was denied, so no account was linked.",
            "To link an account, start again (POST /connections), open the authorizeUrl and choose Allow on Amazon's consent page.",
        ),
        "invalid_scope" => Failure::new(
            Kind::BadRequest,
            "Amazon refused the requested permissions",
            "Amazon answered invalid_scope: the LwA security profile is not approved for the Amazon Ads scopes adsync asks for.",
            "Ask Amazon Ads to approve the security profile for advertising::audiences and advertising::campaign_management \
             (or set LWA_SCOPES), then start again.",
        ),
        other => Failure::new(
            Kind::BadRequest,
            "Amazon could not complete the sign-in",
            format!(
                "Amazon answered the sign-in with the error {other:?}, so no account was linked."
            ),
            "Check the LwA security profile (client id, allowed return URL = OAUTH_REDIRECT_URI), then start again with POST /connections.",
        ),
    }
}

/// `error` values are OAuth tokens (letters and `_`); anything else is not echoed.
pub(super) fn sanitize_error_code(e: &str) -> &str {
    if !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        e
    } else {
        "unknown_error"
    }
}

pub(super) fn kind_of(e: &ConsumeError) -> &'static str {
    match e {
        ConsumeError::Unknown => "unknown",
        ConsumeError::Expired => "expired",
        ConsumeError::Used => "used",
        ConsumeError::Store(_) => "store_error",
    }
}

pub(super) fn exchange_failure(e: &AmazonError) -> Failure {
    match e {
        AmazonError::Lwa(LwaError::InvalidGrant { .. }) => Failure::new(
            Kind::BadRequest,
            "Amazon did not accept the sign-in code",
            "Amazon answered invalid_grant: the authorization code expired (codes last 5 minutes) or was already used.",
            START_AGAIN,
        ),
        AmazonError::Lwa(LwaError::InvalidClient { .. }) => Failure::new(
            Kind::BadGateway,
            "adsync's Amazon credentials were refused",
            "Amazon answered invalid_client: the LwA client id or secret adsync uses is wrong.",
            "Fix the LWA_CREDENTIALS_SECRET secret (client_id, client_secret of the security profile), then start again.",
        ),
        e if e.is_retryable() => Failure::new(
            Kind::BadGateway,
            "Amazon could not be reached",
            "The sign-in code could not be exchanged because Amazon's token service did not answer in time.",
            START_AGAIN,
        ),
        _ => Failure::new(
            Kind::BadGateway,
            "Amazon refused the sign-in",
            "Amazon's token service refused to exchange the sign-in code.",
            "Check the LwA security profile (allowed return URL = OAUTH_REDIRECT_URI), then start again.",
        ),
    }
}

pub(super) fn listing_failure(e: &AmazonError) -> Failure {
    tracing::warn!(error = %e, "listing profiles or advertisers failed");
    if matches!(e, AmazonError::Timeout) {
        return Failure::new(
            Kind::GatewayTimeout,
            "Amazon is too slow to list the advertiser accounts",
            "adsync signed in, but Amazon did not list the login's profiles and DSP advertisers \
             within the time this page may take (API Gateway ends a request after 30 s). The login \
             was not kept.",
            "Try again in a few minutes: create a new connection (POST /connections) and open its authorizeUrl.",
        );
    }
    Failure::new(
        Kind::BadGateway,
        "Amazon could not list the advertiser accounts",
        format!(
            "adsync signed in, but listing the login's profiles and DSP advertisers failed: {}. The login was not kept.",
            e.user_message()
        ),
        START_AGAIN,
    )
}
