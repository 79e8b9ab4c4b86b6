//! An audience fee as Amazon takes it (`metadata.audienceFees[]`): CPM in cents and its
//! currency, which must be the advertiser's. Stored with the destination and sent on create and
//! update.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudienceFee {
    pub cpm_cents: u32,
    pub currency: String,
}
