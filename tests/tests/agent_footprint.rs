//! The agent's memory stays flat: the real `herd-agent` collecting the host,
//! a real PostgreSQL and Redis (when installed), a probe and a scrape job
//! every 100 ms for 1,000 cycles, streaming to a real aggregator. Its
//! resident anonymous memory (heap, stacks: `RssAnon`) after warm-up may not
//! grow beyond a small bound: a leak of a batch's worth of memory (a kept
//! batch, a task or a buffer per cycle: a few KiB each) would show. The
//! bound leaves room for the allocator's one-off steps (a blocking-pool
//! thread's arena and stack when two blocking tasks first overlap).
//! File-backed pages (the binary's code, mapped as it first runs) are
//! reported but not held to the bound: they are shared and capped by the
//! binary's size.

use std::time::{Duration, Instant};

use herd_tests::servers::{PASSWORD, Postgres, Redis, secret_file, servers_available};
use herd_tests::*;

/// Cycles of the whole run, and of the warm-up after which memory is watched.
const CYCLES: f64 = 1000.0;
const WARM_UP_CYCLES: f64 = 200.0;
/// Growth allowed after warm-up: allocator steps, not a leak (1.3 leaked
/// KiB per cycle would be more over the 800 cycles watched).
const MAX_GROWTH_BYTES: u64 = 1 << 20;

#[test]
fn a_thousand_cycles_at_100ms_keep_the_agents_memory_flat() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("flat");
    let aggregator = Aggregator::start(&pki, work.path());
    let app = serve_text(|_| Some("app_requests_total{code=\"200\"} 12\napp_up 1\n".to_owned()));
    let mut tail = format!(
        "[[collect.scrape]]\njob = \"app\"\nurl = \"http://{app}/metrics\"\n\
         [[collect.probe]]\ntarget = \"tcp://{app}\"\n"
    );
    let servers = servers_available().then(|| {
        let (postgres, redis) = (Postgres::start(), Redis::start());
        let password = secret_file(&work.path().join("servers.password"), PASSWORD);
        tail.push_str(&format!(
            "[[collect.postgres]]\ndsn = \"{}\"\npassword_file = \"{}\"\n\
             [[collect.redis]]\naddress = \"{}\"\npassword_file = \"{}\"\n",
            postgres.dsn("postgres"),
            password.display(),
            redis.address(),
            password.display()
        ));
        (postgres, redis)
    });
    let config = agent_config_with(work.path(), &pki, "flat", &[aggregator.quic], "100ms", "", &tail);
    let agent = start_agent(work.path(), "flat", &config);
    let pushed = r#"herd_agent_buffer_pushed_batches_total{instance="flat"}"#;
    let cycles = || latest_value(&aggregator, pushed).unwrap_or(0.0);

    // Warm-up: connections made, series interned, buffers at their working size.
    wait_for(Duration::from_secs(60), || (cycles() >= WARM_UP_CYCLES).then_some(()))
        .unwrap_or_else(|| panic!("the agent did not reach {WARM_UP_CYCLES} cycles:\n{}", agent.log()));
    let mut samples = Vec::new();
    let started = Instant::now();
    let (file_before, total_before) = (status_bytes(agent.pid(), "RssFile:"), agent.rss_bytes().unwrap_or(0));
    let done = wait_for(Duration::from_secs(150), || {
        samples.push(status_bytes(agent.pid(), "RssAnon:"));
        std::thread::sleep(Duration::from_millis(500));
        (cycles() >= CYCLES).then_some(())
    });
    assert!(done.is_some(), "1,000 cycles took longer than {:?}:\n{}", started.elapsed(), agent.log());
    for selector in [r#"herd_collector_success{instance="flat",collector="host"}"#, r#"probe_success{instance="flat"}"#]
    {
        assert_eq!(latest_value(&aggregator, selector), Some(1.0), "{selector}");
    }
    if servers.is_some() {
        assert_eq!(latest_value(&aggregator, r#"pg_up{instance="flat"}"#), Some(1.0));
        assert_eq!(latest_value(&aggregator, r#"redis_up{instance="flat"}"#), Some(1.0));
    }

    // The first tenth of the watched stretch against the rest.
    let head = samples.len().div_ceil(10).max(1);
    let baseline = samples[..head].iter().copied().max().unwrap_or(0);
    let peak = samples.iter().copied().max().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    eprintln!(
        "agent anonymous RSS after warm-up {:.2} MiB, peak {:.2} MiB, last {:.2} MiB over {} readings; \
         file-backed {:.2} MiB then {:.2} MiB; total {:.2} MiB then {:.2} MiB",
        mib(baseline),
        mib(peak),
        mib(last),
        samples.len(),
        mib(file_before),
        mib(status_bytes(agent.pid(), "RssFile:")),
        mib(total_before),
        mib(agent.rss_bytes().unwrap_or(0)),
    );
    assert!(
        peak <= baseline + MAX_GROWTH_BYTES,
        "agent anonymous RSS grew from {baseline} to {peak} bytes after warm-up (allowed {MAX_GROWTH_BYTES}); readings: {samples:?}"
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// A `/proc/PID/status` field in bytes (0 if absent).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
