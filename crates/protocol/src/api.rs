//! The server API's request bodies (contract section 5), as application
//! backends write them; the gateway validates the fields.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::present;

/// `POST /v1/send`.
#[derive(Debug, Deserialize)]
pub struct ApiSend {
    pub to: String,
    #[serde(default)]
    pub from: Option<String>,
    /// `None` only when the field is missing: `"body":null` is a body.
    #[serde(default, deserialize_with = "present")]
    pub body: Option<Box<RawValue>>,
    #[serde(default)]
    pub id: Option<String>,
}
