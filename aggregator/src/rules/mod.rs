//! Prometheus rule files and their evaluation.
//!
//! - `file`: reads rule files unchanged and checks them as `promtool check rules` does.
//! - `template`: the Go-template subset alert labels and annotations use.
//! - `group`: one group's evaluation at a given time (no clock, no I/O but the store).
//! - `state`: alert state saved under the state directory and restored on start.
//! - `trigger`: which groups a stored batch concerns (ingest-triggered
//!   evaluation of alerting rules) and the minimum spacing between such evaluations.
//! - `manager`: loads files, runs each group at its interval and on triggers, reloads, stops.
//! - `unittest`: rule unit tests in promtool's format (`herd-aggregator rules test`).
//!
//! Rules read and write only through `Storage` and the PromQL `Engine`; they
//! know nothing of HTTP. Alerts leave through `notify`.

pub mod file;
pub mod group;
pub mod manager;
pub mod state;
pub mod template;
pub mod trigger;
#[cfg(test)]
mod trigger_tests;
pub mod unittest;

pub use file::{AlertingRule, RecordingRule, Rule, RuleFileError, RuleGroup, load_file, parse_rule_file};
pub use group::{Alert, AlertState, EvalContext, EvalKind, Group, GroupOutcome, Health, OutgoingAlert};
pub use manager::{ApplyError, IngestTriggerOptions, ManagerOptions, RuleManager, check_file};
