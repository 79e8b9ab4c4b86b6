//! The AWS SDK clients' HTTPS client, built so that the root certificates are read on the first
//! call, not at cold start.
//!
//! The TLS stack is the SDK's default one (hyper 1, rustls 0.23 with aws-lc, post-quantum hybrid
//! key exchange preferred), the same as reqwest's for Amazon Ads. ring instead would make each
//! arm64 binary 0.55 MB smaller (measured, README "Cold start and size") but gives up that key
//! exchange on the connections carrying tokens and hashed identifiers.

use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;

/// A new HTTP client for one SDK configuration ([`crate::aws::config_loader`]), with its own
/// connection pool, as the SDK's default client: a pooled connection belongs to the tokio runtime
/// that opened it, so one pool for the whole process would hand dead connections from one
/// runtime to the next (tests run a runtime each). The root certificates are read once per
/// process, by the first connection of any of them.
pub fn client() -> SharedHttpClient {
    let inner = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https();
    RootsOnFirstCall(inner).into_shared()
}

/// The SDK's client, minus one thing: it loads the system's root certificates (~150 files) in
/// `validate_base_client_config`, that is when each SDK client is built, on the cold start's
/// path. This wrapper leaves that hook out, so the roots load when the first connection is made
/// (`http_connector`, which builds and caches the connector).
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

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}
