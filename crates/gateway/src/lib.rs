//! The Switchboard gateway node: the public HTTP/WebSocket port, client
//! authentication, one task per connection, and the local connection table
//! the backend delivers into. The `switchboard` binary is a thin shell over
//! [`serve`].

mod api;
mod auth;
mod config;
mod connection;
mod demo;
mod http;
mod hub;
mod jwks;
mod keys;
mod limits;
mod node;
mod outbound;
mod respond;
mod serve;
mod webhook;

pub use auth::{AuthError, issue_token};
pub use config::{Cli, Command, Config, ConfigError, ServeArgs, TokenArgs};
pub use serve::{ServeError, serve};
