//! The segment-export function: segments, destinations, mappings, qualifications and the
//! scheduled `backfill` / `redrive` tasks (`adsync::export`). Builds its clients once per process
//! and hands every invocation to the shared runtime.

#[tokio::main]
async fn main() -> Result<(), adsync::runtime::Error> {
    adsync::runtime::start("segment-export", async |aws, settings| {
        adsync::export::ExportHandler::from_settings(aws, settings).await
    })
    .await
}
