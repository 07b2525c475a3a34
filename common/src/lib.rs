//! Shared by the agent and the aggregator.
//!
//! - `protocol`: the wire protocol, sans I/O. `frame` cuts a byte stream
//!   into length-prefixed frames, `codec` turns frames into `messages`,
//!   `samples` packs a batch's values against the previous batch, and `link`
//!   holds the per-connection state machines both binaries drive.
//! - `metric`: label sets, the agent's series table, staleness markers.
//! - `config`: the configuration schemas of both binaries and their validation.
//! - `tls`: the fleet CA, certificate issuance, mutual-TLS configurations.
//! - `varint`: the LEB128/zigzag coding every Herd encoding shares.
#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod metric;
pub mod protocol;
pub mod tls;
pub mod varint;

/// The version of this build, shared by both binaries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
