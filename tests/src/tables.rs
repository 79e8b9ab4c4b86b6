//! DynamoDB tables for tests and bench binaries, in the stack's shapes (`template.yaml`): a
//! `pk`/`sk` table, optionally with the `gsi1` index (`gsi1pk`/`gsi1sk`, all attributes). Tests
//! that run scheduled work create their own so one test's task never works another's items.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

/// Creates table `name` (`pk`/`sk`, plus `gsi1` when `gsi`).
pub async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
    gsi: bool,
) -> Result<(), String> {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let key = |n: &str, t| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .expect("name and key type are set")
    };
    let mut c = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range));
    if gsi {
        c = c
            .attribute_definitions(attr("gsi1pk"))
            .attribute_definitions(attr("gsi1sk"))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name("gsi1")
                    .key_schema(key("gsi1pk", KeyType::Hash))
                    .key_schema(key("gsi1sk", KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .expect("index name and keys are set"),
            );
    }
    c.send().await.map_err(|e| {
        format!(
            "cannot create table {name} in DynamoDB Local (is the local stack up?): {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        )
    })?;
    Ok(())
}

/// A fresh destinations table (with `gsi1`) for one test; panics with the reason when it cannot.
pub async fn fresh_destinations_table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let name = format!("adsync-test-destinations-{}", uuid::Uuid::new_v4().simple());
    create_table(ddb, &name, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    name
}
