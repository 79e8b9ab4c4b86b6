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
    pub async fn from_env() -> Self {
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&conf),
            secrets: aws_sdk_secretsmanager::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
        }
    }
}
