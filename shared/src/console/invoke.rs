//! "Redrive now": an asynchronous invocation (`InvocationType=Event`) of the function that owns a
//! parked queue, with its scheduled task's input (`{"task":"redrive"}`), so the console never
//! touches queue messages itself and the redrive runs with that function's role, budget and
//! retry rules.
//!
//! `CONVERSION_INGEST_FUNCTION` names the function (the template passes its ARN); locally the
//! invocation goes to `cargo lambda watch` through `AWS_ENDPOINT_URL_LAMBDA` (set by stack-up.sh).

use crate::aws::Lazy;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

/// Starts scheduled tasks of other functions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TaskInvoker {
    /// Built by the first "redrive now" (cold start: `crate::aws::Lazy`).
    client: Lazy<aws_sdk_lambda::Client>,
    conversion_ingest: String,
}

impl TaskInvoker {
    pub fn new(client: impl Into<Lazy<aws_sdk_lambda::Client>>, conversion_ingest: String) -> Self {
        Self {
            client: client.into(),
            conversion_ingest,
        }
    }

    /// From the settings: the shared AWS configuration (with the SDK timeouts; the Lambda API's
    /// endpoint is the SDK's own, `AWS_ENDPOINT_URL_LAMBDA` locally) and
    /// `CONVERSION_INGEST_FUNCTION` (default `conversion-ingest`, the local binary's name).
    pub async fn from_settings(settings: &crate::settings::Settings) -> Self {
        let conf = crate::aws::config_loader()
            .timeout_config(settings.aws.timeouts.config())
            .load()
            .await;
        Self::new(
            Lazy::new(&conf, aws_sdk_lambda::Client::new),
            settings.conversion_ingest_function.clone(),
        )
    }

    /// An invoker that calls the Lambda API at `endpoint` (tests, local serving).
    pub async fn with_endpoint(endpoint: &str, conversion_ingest: &str) -> Self {
        let conf = crate::aws::config_loader()
            .endpoint_url(endpoint)
            .load()
            .await;
        Self::new(
            aws_sdk_lambda::Client::new(&conf),
            conversion_ingest.to_string(),
        )
    }

    /// Queues one run of conversion-ingest's `redrive` task; returns when Lambda accepted it.
    pub async fn redrive_conversions(&self) -> Result<(), String> {
        let out = self
            .client
            .invoke()
            .function_name(&self.conversion_ingest)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(br#"{"task":"redrive"}"#.to_vec()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "Lambda did not accept the redrive: {}",
                    aws_sdk_lambda::error::DisplayErrorContext(e)
                )
            })?;
        if out.function_error().is_some() {
            return Err("the redrive task failed to start".into());
        }
        Ok(())
    }
}
