//! One TLS stack for every HTTPS connection the functions make: rustls 0.23 with ring, for the
//! Amazon Ads client (reqwest) and for the AWS SDK clients alike. One crypto library keeps the
//! binaries small (the SDK's default HTTPS client brings aws-lc, ~2 MB of C); and the root
//! certificates are read on the first call, not at cold start.

use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;
use std::sync::OnceLock;

/// Makes ring the process's rustls crypto provider (reqwest's, built without one). Idempotent.
pub fn install_ring() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // Err means a provider is installed already (a test tool's); either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The HTTP client of every AWS SDK client of the process (one connection pool): the SDK's own
/// hyper 1 + rustls client with ring.
pub fn sdk_http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let inner = aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https();
            RootsOnFirstCall(inner).into_shared()
        })
        .clone()
}

/// The SDK's client, minus one thing: it loads the system's root certificates (~150 files) in
/// `validate_base_client_config`, that is when each SDK client is built, on the cold start's
/// path. This wrapper leaves that check out, so the roots load when the first connection is
/// made (`http_connector`, which builds and caches the connector).
#[derive(Debug)]
struct RootsOnFirstCall(SharedHttpClient);

impl HttpClient for RootsOnFirstCall {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}
