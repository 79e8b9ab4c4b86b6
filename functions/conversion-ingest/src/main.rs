//! The conversion-ingest function: `POST /accounts/{accountId}/conversions` and the scheduled
//! `{"task":"redrive"}` of parked conversions (`adsync::ingest`). Builds its clients and stores
//! once per process and hands every invocation to the shared runtime.

#[tokio::main]
async fn main() -> Result<(), adsync::runtime::Error> {
    adsync::runtime::start("conversion-ingest", async |aws, settings| {
        adsync::ingest::ConversionHandler::from_settings(aws, settings).await
    })
    .await
}
