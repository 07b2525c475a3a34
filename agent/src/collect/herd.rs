//! The agent's own metrics (`job="herd"`): buffer, uplink and process
//! figures, collected like any other source so they reach the store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Batch, CollectError, Collector};
use crate::buffer::BufferStats;
use crate::remote_config::ConfigStats;
use crate::uplink::UplinkStats;

/// Clock ticks per second in /proc/self/stat.
const USER_HZ: f64 = 100.0;

pub struct SelfCollector {
    buffer: Arc<BufferStats>,
    uplink: Arc<UplinkStats>,
    config: Arc<ConfigStats>,
    page_size: f64,
}

impl SelfCollector {
    pub fn new(buffer: Arc<BufferStats>, uplink: Arc<UplinkStats>, config: Arc<ConfigStats>) -> Self {
        Self { buffer, uplink, config, page_size: 4096.0 }
    }
}

#[async_trait]
impl Collector for SelfCollector {
    fn name(&self) -> &str {
        "agent"
    }

    fn job(&self) -> &str {
        "herd"
    }

    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed) as f64;
        let b = &self.buffer;
        out.push("herd_agent_buffer_bytes", &[], load(&b.bytes));
        out.push("herd_agent_buffer_batches", &[], load(&b.batches));
        out.push("herd_agent_buffer_memory_batches", &[], load(&b.memory_batches));
        out.push("herd_agent_buffer_dropped_samples_total", &[], load(&b.dropped_samples));
        out.push("herd_agent_buffer_dropped_batches_total", &[], load(&b.dropped_batches));
        out.push("herd_agent_buffer_pushed_batches_total", &[], load(&b.pushed_batches));
        out.push("herd_agent_buffer_budget_bytes", &[], load(&b.budget_bytes));
        let oldest_ms = b.oldest_timestamp_ms.load(Ordering::Relaxed);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let age = if oldest_ms == 0 { 0.0 } else { now_ms.saturating_sub(oldest_ms) as f64 / 1000.0 };
        out.push("herd_agent_buffer_oldest_unsent_age_seconds", &[], age);
        let u = &self.uplink;
        out.push("herd_agent_uplink_connected", &[], load(&u.connected));
        out.push("herd_agent_uplink_connects_total", &[], load(&u.connects));
        out.push("herd_agent_uplink_sent_batches_total", &[], load(&u.sent_batches));
        out.push("herd_agent_uplink_sent_samples_total", &[], load(&u.sent_samples));
        out.push("herd_agent_uplink_sent_bytes_total", &[], load(&u.sent_bytes));
        out.push("herd_agent_uplink_backfilled_batches_total", &[], load(&u.backfilled_batches));
        out.push("herd_agent_uplink_acked_batches_total", &[], load(&u.acked_batches));
        // 0 until the renewer has read the certificate.
        out.push("herd_agent_certificate_expiry_timestamp_seconds", &[], load(&u.certificate_expiry_seconds));
        out.push("herd_agent_certificate_renewals_total", &[], load(&u.certificate_renewals));
        out.push("herd_agent_certificate_renewal_failures_total", &[], load(&u.certificate_renewal_failures));
        out.push("herd_agent_config_version", &[], load(&self.config.version));
        out.push("herd_agent_config_apply_failures_total", &[], load(&self.config.apply_failures));

        // Process figures, as Prometheus client libraries name them.
        let path = "/proc/self/stat";
        let stat = std::fs::read_to_string(path).map_err(|source| CollectError::Read { path: path.into(), source })?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th of those.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_ascii_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system), Some(rss_pages)) = (ticks(11), ticks(12), ticks(21)) {
            out.push("process_cpu_seconds_total", &[], (user + system) / USER_HZ);
            out.push("process_resident_memory_bytes", &[], rss_pages * self.page_size);
        }
        Ok(())
    }
}
