//! A hello-world `lambda_runtime` function, as `cargo lambda new` makes it (tracing subscriber,
//! echo handler): the floor the cold-start benchmark (`coldstart_bench`) compares the functions
//! with. Not deployed.

use lambda_runtime::{Error, LambdaEvent, service_fn, tracing};
use serde_json::Value;

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    Ok(event.payload)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    lambda_runtime::run(service_fn(handler)).await
}
