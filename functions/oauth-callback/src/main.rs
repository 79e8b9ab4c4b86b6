//! The oauth-callback function: account linking (`adsync::linking`). Builds its clients once per
//! process and hands every invocation to the shared runtime.

use lambda_runtime::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    adsync::telemetry::init_tracing();
    // In AWS, a plain-http endpoint override is refused before any client is built.
    adsync::config::refuse_insecure_endpoints().map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        Error::from(e)
    })?;
    let handler = adsync::linking::Linking::from_env().await.map_err(|e| {
        tracing::error!(error = %e, "oauth-callback cannot start");
        Error::from(e)
    })?;
    adsync::runtime::run(handler).await
}
