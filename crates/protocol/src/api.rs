//! The server API's request bodies (contract sections 5 and 10), as
//! application backends write them; the gateway validates the fields.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::{WireTo, present, recipients};
use crate::frame::To;

/// `POST /v1/send`.
#[derive(Deserialize)]
pub struct ApiSend<'a> {
    #[serde(borrow)]
    to: Option<WireTo<'a>>,
    #[serde(default, borrow)]
    pub from: Option<Cow<'a, str>>,
    /// `None` only when the field is missing: `"body":null` is a body.
    #[serde(default, deserialize_with = "present")]
    pub body: Option<Box<RawValue>>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub ephemeral: bool,
}

impl ApiSend<'_> {
    /// The recipients, by the rules of a client's `send`; `None` when `to`
    /// is missing.
    pub fn to(&mut self) -> Option<Result<To, String>> {
        self.to.take().map(recipients)
    }
}

/// `POST /v1/disconnect`.
#[derive(Deserialize)]
pub struct ApiDisconnect<'a> {
    #[serde(borrow)]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub device: Option<Cow<'a, str>>,
    /// Logged, not sent to the client.
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    /// Also refuse the user's upgrades for this many seconds.
    #[serde(default)]
    pub block_s: Option<u64>,
}
