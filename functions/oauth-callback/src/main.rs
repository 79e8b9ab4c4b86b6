//! The oauth-callback function: account linking (`adsync::linking`). Builds its clients once per
//! process and hands every invocation to the shared runtime.

#[tokio::main]
async fn main() -> Result<(), adsync::runtime::Error> {
    adsync::runtime::start("oauth-callback", async |aws, settings| {
        adsync::linking::Linking::from_settings(aws, settings).await
    })
    .await
}
