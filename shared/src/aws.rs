//! AWS SDK clients, built once per process and shared by every invocation.

/// The SDK clients adsync uses. Cloning is cheap (the SDK clients are `Arc` inside).
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Loads the shared AWS configuration from the environment (honours `AWS_ENDPOINT_URL` and
    /// `AWS_ENDPOINT_URL_<SERVICE>`, which is how the local stack points us at moto and
    /// DynamoDB Local).
    ///
    /// `ADSYNC_AWS_ENDPOINT_URL` / `ADSYNC_AWS_ENDPOINT_URL_DYNAMODB`, when non-empty, do the
    /// same. They exist for `sam local --env-vars`, which passes only variables the template
    /// declares: the template declares these empty (unset in AWS), whereas an empty
    /// `AWS_ENDPOINT_URL` makes the SDK fail on the first call.
    pub async fn from_env() -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = crate::config::optional("ADSYNC_AWS_ENDPOINT_URL") {
            loader = loader.endpoint_url(url);
        }
        let conf = loader.load().await;
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&conf);
        if let Some(url) = crate::config::optional("ADSYNC_AWS_ENDPOINT_URL_DYNAMODB") {
            dynamodb = dynamodb.endpoint_url(url);
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            secrets: aws_sdk_secretsmanager::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
        }
    }
}
