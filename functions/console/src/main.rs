//! The console function: the web pages under `/console/…` (`adsync::console`). Builds its
//! clients, stores and the use cases it calls in process once per process and hands every
//! invocation to the shared runtime.

use lambda_runtime::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    adsync::telemetry::init_tracing();
    // In AWS, a plain-http endpoint override is refused before any client is built.
    adsync::config::refuse_insecure_endpoints().map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        Error::from(e)
    })?;
    let aws = adsync::aws::AwsClients::from_env().await;
    let handler = adsync::console::Console::from_env(&aws)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "console cannot start");
            Error::from(e)
        })?;
    adsync::runtime::run(handler).await
}
