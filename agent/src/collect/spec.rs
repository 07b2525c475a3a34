//! What each collector is built from, so that a new configuration can tell
//! which collectors it keeps (same settings: the running collector stays,
//! with its connections and series), re-tunes (only the interval differs),
//! replaces, starts or stops.

use std::sync::Arc;
use std::time::Duration;

use herd_common::config::agent::{
    AgentConfig, ContainersConfig, HostConfig, PostgresConfig, ProbeConfig, RedisConfig, ScrapeConfig,
};
use tokio_util::sync::CancellationToken;

use super::Collector;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Host(#[from] super::host::HostSettingsError),
    #[error(transparent)]
    Postgres(#[from] super::postgres::PostgresSettingsError),
}

/// One configured collector.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectorSpec {
    /// The host collector and `collect.timeout`, which bounds its statfs calls.
    Host {
        config: HostConfig,
        collect_timeout: Duration,
    },
    Containers(ContainersConfig),
    /// `index` is the entry's position, for error messages only.
    Postgres {
        index: usize,
        config: PostgresConfig,
    },
    Redis(RedisConfig),
    Probe(ProbeConfig),
    Scrape(ScrapeConfig),
}

impl CollectorSpec {
    /// Every collector `config` asks for, in a stable order.
    pub fn all(config: &AgentConfig) -> Vec<CollectorSpec> {
        let collect = &config.collect;
        let mut specs = Vec::new();
        if let Some(host) = &collect.host {
            specs.push(CollectorSpec::Host { config: host.clone(), collect_timeout: collect.timeout });
        }
        if let Some(containers) = &collect.containers {
            specs.push(CollectorSpec::Containers(containers.clone()));
        }
        specs.extend(
            collect.postgres.iter().enumerate().map(|(index, c)| CollectorSpec::Postgres { index, config: c.clone() }),
        );
        specs.extend(collect.redis.iter().cloned().map(CollectorSpec::Redis));
        specs.extend(collect.probe.iter().cloned().map(CollectorSpec::Probe));
        specs.extend(collect.scrape.iter().cloned().map(CollectorSpec::Scrape));
        specs
    }

    /// Its own interval, if it has one (else the agent's `collect.interval`).
    pub fn interval(&self) -> Option<Duration> {
        match self {
            CollectorSpec::Host { .. } | CollectorSpec::Containers(_) => None,
            CollectorSpec::Postgres { config, .. } => Some(config.interval),
            CollectorSpec::Redis(config) => Some(config.interval),
            CollectorSpec::Probe(config) => Some(config.interval),
            CollectorSpec::Scrape(config) => Some(config.interval),
        }
    }

    /// Whether a collector built from `self` can keep running for `other`:
    /// equal settings, the interval aside (the scheduler re-tunes that).
    pub fn same_collector(&self, other: &CollectorSpec) -> bool {
        fn without_interval(spec: &CollectorSpec) -> CollectorSpec {
            let mut spec = spec.clone();
            match &mut spec {
                CollectorSpec::Host { .. } | CollectorSpec::Containers(_) => {}
                CollectorSpec::Postgres { index, config } => {
                    *index = 0;
                    config.interval = Duration::ZERO;
                }
                CollectorSpec::Redis(config) => config.interval = Duration::ZERO,
                CollectorSpec::Probe(config) => config.interval = Duration::ZERO,
                CollectorSpec::Scrape(config) => config.interval = Duration::ZERO,
            }
            spec
        }
        without_interval(self) == without_interval(other)
    }

    /// Builds the collector. `stop` ends the tasks it owns (the containers
    /// collector's Docker watcher) when it is removed or the agent stops.
    pub fn build(&self, stop: CancellationToken) -> Result<Arc<dyn Collector>, BuildError> {
        Ok(match self {
            CollectorSpec::Host { config, collect_timeout } => {
                Arc::new(super::host::HostCollector::from_config(config, *collect_timeout)?)
            }
            CollectorSpec::Containers(config) => Arc::new(super::containers::ContainersCollector::start(config, stop)),
            CollectorSpec::Postgres { index, config } => {
                Arc::new(super::postgres::PostgresCollector::from_config(*index, config)?)
            }
            CollectorSpec::Redis(config) => Arc::new(super::redis::RedisCollector::from_config(config)),
            CollectorSpec::Probe(config) => Arc::new(super::probe::ProbeCollector::from_config(config)),
            CollectorSpec::Scrape(config) => Arc::new(super::scrape::ScrapeCollector::from_config(config)),
        })
    }
}
