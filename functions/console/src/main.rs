//! The console function: the web pages under `/console/…` (`adsync::console`). Builds its
//! clients, stores and the use cases it calls in process once per process and hands every
//! invocation to the shared runtime.

#[tokio::main]
async fn main() -> Result<(), adsync::runtime::Error> {
    adsync::runtime::start("console", async |aws, settings| {
        adsync::console::Console::from_settings(aws, settings).await
    })
    .await
}
