//! Login with Amazon through the client: the consent URL's code exchange and token refresh,
//! sent on the same retry path as every Ads API call.

use super::AmazonClient;
use crate::amazon::error::AmazonError;
use crate::amazon::lwa::{Grant, LwaError, TokenGrant};
use crate::amazon::region::Region;

impl AmazonClient {
    /// Exchanges an authorization code for tokens at `region`'s token endpoint. An unusable code
    /// is `AmazonError::Lwa(LwaError::InvalidGrant {..})`.
    pub async fn exchange_code(
        &self,
        region: Region,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenGrant, AmazonError> {
        self.exchange_code_pkce(region, code, redirect_uri, None)
            .await
    }

    /// [`exchange_code`](Self::exchange_code) with the PKCE verifier of the consent (when it
    /// carried a challenge).
    pub async fn exchange_code_pkce(
        &self,
        region: Region,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<TokenGrant, AmazonError> {
        let grant = Grant::Code {
            code,
            redirect_uri,
            code_verifier,
        };
        self.token_call(region, &grant).await
    }

    /// Refreshes an access token. `invalid_grant` (consent revoked) becomes
    /// [`AmazonError::ReauthorizationRequired`].
    pub(crate) async fn refresh_grant(
        &self,
        region: Region,
        refresh_token: &str,
    ) -> Result<TokenGrant, AmazonError> {
        match self
            .token_call(region, &Grant::Refresh { refresh_token })
            .await
        {
            Err(AmazonError::Lwa(LwaError::InvalidGrant { .. })) => {
                Err(AmazonError::ReauthorizationRequired)
            }
            other => other,
        }
    }

    async fn token_call(
        &self,
        region: Region,
        grant: &Grant<'_>,
    ) -> Result<TokenGrant, AmazonError> {
        let url = self.inner.endpoints.token_url(region);
        let creds = self.credentials().await?;
        let call = || async {
            let timeout = self.attempt_timeout()?;
            crate::amazon::lwa::token_request(self.inner.http.get(), url, creds, grant, timeout)
                .await
        };
        self.retrying(call, "POST", "/auth/o2/token").await
    }
}
