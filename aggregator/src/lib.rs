//! The Herd aggregator: accepts agents, stores their samples, answers
//! PromQL over a Prometheus-compatible HTTP API.
//!
//! - `ingest`: QUIC listener, one task per agent connection, writes to the store.
//! - `store`: the `Storage` trait every reader and writer goes through.
//! - `wal`: the write-ahead log batches are synced to before they are acknowledged.
//! - `promql`: evaluation of parsed PromQL over `Storage`.
//! - `rules`: Prometheus rule files, evaluated at their intervals; alert state.
//! - `notify`: delivers alerts to Alertmanagers.
//! - `alertmanager`: the built-in alert router (Alertmanager's config, silences, receivers, v2 API).
//! - `api`: HTTP and JSON, and nothing else does either.
//! - `http`: the HTTP listener (connections, TLS, request limits) the API is served on.
//! - `auth`: the one authentication and authorization layer in front of every HTTP route.
//! - `fleet`: which agents exist and how they are doing.
//! - `identity`: enrollment tokens, the CA key signing agent certificates, their inventory and revocation.
//! - `configs`: remote configuration (profiles, versions, staged rollouts, what each agent runs).
//! - `remote`: Prometheus remote_write out (WAL-tailing queues) and in (`/api/v1/write`).
//! - `ui`: the built-in web UI (HTML pages, SVG charts, its own small script).
//! - `selfmon`: the aggregator's own metrics, written to the store.
//! - `up`: `up{job, instance}` for every agent target, from the fleet.
//! - `server`: wires the above for `serve` and `demo`.
//! - `client`: the CLI's HTTP client of a running aggregator.
//! - `pki` and `demo`: the CLI's certificate commands and the one-command demo.
#![forbid(unsafe_code)]

pub mod alertmanager;
pub mod api;
pub mod auth;
pub mod client;
pub mod configs;
pub mod demo;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod notify;
pub mod pki;
pub mod promql;
pub mod remote;
pub mod rules;
pub mod selfmon;
pub mod server;
pub mod store;
pub mod ui;
pub mod up;
pub mod wal;
