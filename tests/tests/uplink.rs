//! The foundation end to end: certificates from the CLI, a real aggregator
//! and real agents on loopback, data visible through the HTTP API, and
//! refusal of agents the fleet CA did not sign.

use std::time::{Duration, Instant};

use herd_tests::*;

#[test]
fn agent_metrics_are_queryable_within_three_seconds_of_agent_start() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("web-1");
    let aggregator = Aggregator::start(&pki, work.path());
    let config = agent_config(work.path(), &pki, "web-1", aggregator.quic, "1s");

    let started = Instant::now();
    let _agent = start_agent(work.path(), "web-1", &config);
    let series = wait_for(Duration::from_secs(10), || {
        let result = vector_result(&aggregator.query("node_load1"));
        (!result.is_empty()).then_some(result)
    })
    .expect("node_load1 never arrived");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "node_load1 took {elapsed:?} to become queryable");

    let metric = &series[0]["metric"];
    assert_eq!(metric["__name__"], "node_load1");
    assert_eq!(metric["job"], "node");
    assert_eq!(metric["instance"], "web-1");
    let value: f64 = series[0]["value"][1].as_str().unwrap().parse().unwrap();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    let current: f64 = loadavg.split_whitespace().next().unwrap().parse().unwrap();
    assert!((value - current).abs() < 2.0, "node_load1 {value} far from /proc/loadavg {current}");

    // The other first families arrive in the same batch.
    for family in [
        "node_cpu_seconds_total",
        "node_memory_MemTotal_bytes",
        "node_memory_MemAvailable_bytes",
        "node_load5",
        "node_load15",
    ] {
        assert!(!vector_result(&aggregator.query(family)).is_empty(), "{family} missing");
    }
    let cpus = vector_result(&aggregator.query(r#"node_cpu_seconds_total{mode="idle"}"#));
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cores = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    assert_eq!(cpus.len(), cores, "one idle series per core");

    // The fleet API knows the agent by its certificate.
    let (_, agents) = aggregator.get("/api/v1/agents").unwrap();
    let agents: serde_json::Value = serde_json::from_str(&agents).unwrap();
    assert_eq!(agents["data"][0]["id"], "web-1");
    assert_eq!(agents["data"][0]["connected"], true);
}

#[test]
fn agents_not_signed_by_the_fleet_ca_are_refused_and_the_good_one_keeps_flowing() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("good");
    let aggregator = Aggregator::start(&pki, work.path());
    let _good = start_agent(work.path(), "good", &agent_config(work.path(), &pki, "good", aggregator.quic, "1s"));
    wait_for(Duration::from_secs(10), || {
        (!vector_result(&aggregator.query(r#"node_load1{instance="good"}"#)).is_empty()).then_some(())
    })
    .expect("good agent's data never arrived");

    // An agent whose certificate comes from another CA, though it trusts ours.
    let rogue_pki = Pki::create(work.path().join("rogue-pki"));
    rogue_pki.issue_agent("rogue");
    let rogue_config = agent_config(work.path(), &rogue_pki, "rogue", aggregator.quic, "1s");
    let config_text = std::fs::read_to_string(&rogue_config)
        .unwrap()
        .replace(&rogue_pki.path("ca.pem").display().to_string(), &pki.path("ca.pem").display().to_string());
    std::fs::write(&rogue_config, config_text).unwrap();
    let rogue = start_agent(work.path(), "rogue", &rogue_config);
    wait_for(Duration::from_secs(10), || {
        (aggregator.self_metric("herd_ingest_handshake_failures_total") >= 1.0).then_some(())
    })
    .expect("the rogue agent's handshake was never refused");

    // A client with no certificate at all.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime.block_on(raw::connect_without_certificate(aggregator.quic, &pki.read("ca.pem")));
    assert!(outcome.is_err(), "a client without a certificate got a working stream");
    wait_for(Duration::from_secs(10), || {
        (aggregator.self_metric("herd_ingest_handshake_failures_total") >= 2.0).then_some(())
    })
    .expect("the certificate-less client was not counted as refused");

    // Nothing from the rogue reached the store, and the good agent still flows.
    assert!(vector_result(&aggregator.query(r#"node_load1{instance="rogue"}"#)).is_empty());
    let (_, agents) = aggregator.get("/api/v1/agents").unwrap();
    assert!(!agents.contains("rogue"), "{agents}");
    let before = aggregator.self_metric("herd_ingest_batches_total");
    wait_for(Duration::from_secs(5), || (aggregator.self_metric("herd_ingest_batches_total") > before).then_some(()))
        .expect("good agent stopped flowing after the refusals");
    assert!(rogue.log().contains("uplink unavailable"), "rogue agent should report its refusal:\n{}", rogue.log());
}

#[test]
fn wrong_protocol_version_and_garbage_get_clear_refusals_without_harming_others() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("good");
    pki.issue_agent("tester");
    let aggregator = Aggregator::start(&pki, work.path());
    let _good = start_agent(work.path(), "good", &agent_config(work.path(), &pki, "good", aggregator.quic, "1s"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = (pki.read("tester.pem"), pki.read("tester-key.pem"));
    let ca = pki.read("ca.pem");

    let mut preamble = b"HERD".to_vec();
    preamble.extend_from_slice(&999u16.to_be_bytes());
    preamble.extend_from_slice(&[0, 0]);
    let reason = runtime.block_on(raw::send_and_await_close(aggregator.quic, &ca, &identity, &preamble));
    assert!(reason.contains("protocol version 999") && reason.contains("upgrade"), "close reason: {reason}");

    let mut oversized = Vec::new();
    herd_common::protocol::frame::encode_preamble(herd_common::protocol::PROTOCOL_VERSION, &mut oversized);
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());
    let reason = runtime.block_on(raw::send_and_await_close(aggregator.quic, &ca, &identity, &oversized));
    assert!(reason.contains("exceeds"), "close reason: {reason}");

    let mut garbage = Vec::new();
    herd_common::protocol::frame::encode_preamble(herd_common::protocol::PROTOCOL_VERSION, &mut garbage);
    garbage.extend_from_slice(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    let reason = runtime.block_on(raw::send_and_await_close(aggregator.quic, &ca, &identity, &garbage));
    assert!(reason.contains("protocol error"), "close reason: {reason}");

    assert!(aggregator.self_metric(r#"herd_ingest_protocol_errors_total{reason="version_mismatch"}"#) >= 1.0);
    assert!(aggregator.self_metric(r#"herd_ingest_protocol_errors_total{reason="frame_too_large"}"#) >= 1.0);
    assert!(aggregator.self_metric(r#"herd_ingest_protocol_errors_total{reason="malformed_message"}"#) >= 1.0);
    wait_for(Duration::from_secs(10), || {
        (!vector_result(&aggregator.query(r#"node_load1{instance="good"}"#)).is_empty()).then_some(())
    })
    .expect("good agent unaffected");
    let before = aggregator.self_metric("herd_ingest_batches_total");
    wait_for(Duration::from_secs(5), || (aggregator.self_metric("herd_ingest_batches_total") > before).then_some(()))
        .expect("good agent keeps flowing");
}

/// Hand-driven QUIC clients for what the real agent never does.
mod raw {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use herd_common::tls::{PemPair, TlsMaterial};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn endpoint() -> quinn::Endpoint {
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// Connects presenting no client certificate; `Ok` only if a stream round-trip works.
    pub async fn connect_without_certificate(addr: SocketAddr, ca_pem: &str) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        crypto.alpn_protocols = vec![herd_common::protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        let endpoint = endpoint();
        let attempt = async {
            let connection = endpoint
                .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, "localhost")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            let mut hello = Vec::new();
            herd_common::protocol::frame::encode_preamble(herd_common::protocol::PROTOCOL_VERSION, &mut hello);
            send.write_all(&hello).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            match recv.read(&mut buf).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("stream finished".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(result) => result,
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Connects with a valid identity, writes `bytes`, and returns the
    /// aggregator's close reason.
    pub async fn send_and_await_close(
        addr: SocketAddr,
        ca_pem: &str,
        identity: &(String, String),
        bytes: &[u8],
    ) -> String {
        let material = TlsMaterial {
            ca_pem: ca_pem.to_owned(),
            identity: PemPair { cert_pem: identity.0.clone(), key_pem: identity.1.clone() },
        };
        let config = herd_common::tls::client_config(&material, Duration::from_secs(10)).unwrap();
        let endpoint = endpoint();
        let connection =
            endpoint.connect_with(config, addr, "localhost").unwrap().await.expect("handshake with a valid identity");
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let drain = async {
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
            connection.closed().await
        };
        let error =
            tokio::time::timeout(Duration::from_secs(10), drain).await.expect("aggregator closed the connection");
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => String::from_utf8_lossy(&close.reason).into_owned(),
            other => format!("unexpected close: {other}"),
        }
    }
}

#[test]
fn the_agent_serves_what_it_collects_on_its_local_endpoint() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("local");
    let aggregator = Aggregator::start(&pki, work.path());
    let config = agent_config(work.path(), &pki, "local", aggregator.quic, "1s");
    let port = free_tcp_port();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[agent]\n", &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"), 1),
    )
    .unwrap();
    let agent = start_agent(work.path(), "local", &config);
    let body = wait_for(Duration::from_secs(10), || {
        http_get(&format!("http://127.0.0.1:{port}/metrics")).filter(|(_, b)| b.contains("node_load1")).map(|r| r.1)
    })
    .unwrap_or_else(|| panic!("no local endpoint:\n{}", agent.log()));
    assert!(body.contains("# TYPE node_cpu_seconds_total counter"), "{body}");
    assert!(body.contains(r#"node_load1{instance="local",job="node"}"#), "{body}");
    assert!(body.lines().any(|l| l.starts_with("node_memory_MemTotal_bytes{")), "{body}");
}
