//! Hostile input on real sockets, while a live agent keeps ingesting: 100 MB
//! bodies (declared and chunked), a 1 MB query string, 10,000 nested
//! parentheses of PromQL, 500 idle connections, random bytes to
//! remote_write. Each is refused or answered with an error, the aggregator
//! keeps serving and ingesting, and its resident memory stays under a ceiling.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use herd_tests::{
    Aggregator, HttpToken, Pki, agent_config, encode, free_tcp_port, free_udp_port, gaps, http_call, sample_times,
    start_agent, wait_for,
};

/// Resident memory the aggregator may reach during the test: none of the
/// hostile requests may be buffered whole (a debug build peaked at 37 MiB).
const RSS_CEILING_BYTES: u64 = 128 << 20;

/// Sends `head` then up to `body_bytes` of body in 1 MiB writes (stopping
/// when the server stops reading), and returns the status line it answered.
fn send_raw(addr: SocketAddr, head: &str, body_bytes: usize, chunked: bool) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    if stream.write_all(head.as_bytes()).is_err() {
        return read_status(&mut stream);
    }
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0;
    while sent < body_bytes {
        let piece = if chunked {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            framed
        } else {
            chunk.clone()
        };
        if stream.write_all(&piece).is_err() {
            break;
        }
        sent += chunk.len();
    }
    if chunked {
        let _ = stream.write_all(b"0\r\n\r\n");
    }
    read_status(&mut stream)
}

fn read_status(stream: &mut TcpStream) -> String {
    let mut answer = vec![0u8; 4096];
    let mut got = 0;
    while got < answer.len() {
        match stream.read(&mut answer[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        if answer[..got].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer[..got]).lines().next().unwrap_or_default().to_owned()
}

fn status_code(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn hostile_requests_are_refused_while_ingestion_and_queries_go_on() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("steady");
    let (editor, editor_toml) = HttpToken::create(work.path(), "eddie", "editor");
    let extra = format!(
        "[http]\nanonymous_role = \"viewer\"\nheader_read_timeout = \"6s\"\n{editor_toml}\
         [remote_write_receiver]\nenabled = true\nallow_unauthenticated = false\nbearer_token_files = [\"{}\"]\n",
        editor.file.display()
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(&pki, work.path(), "aggregator", http, quic, &extra);
    let config = agent_config(work.path(), &pki, "steady", quic, "500ms");
    let _agent = start_agent(work.path(), "steady", &config);
    let steady = r#"node_load1{instance="steady"}"#;
    assert!(
        wait_for(Duration::from_secs(20), || (!sample_times(&aggregator, steady, "1m").is_empty()).then_some(()))
            .is_some()
    );
    let started_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let mut peak_rss = 0u64;
    let mut sample_rss = |aggregator: &Aggregator| peak_rss = peak_rss.max(aggregator.process.rss_bytes().unwrap_or(0));
    sample_rss(&aggregator);

    // 100 MB bodies: declared (refused before reading) and chunked (cut off at the limit).
    let head = format!(
        "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        100 << 20
    );
    assert_eq!(status_code(&send_raw(http, &head, 100 << 20, false)), Some(413));
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n",
        editor.token
    );
    let answer = send_raw(http, &head, 100 << 20, true);
    assert!(status_code(&answer).is_some_and(|s| s == 413 || s == 400), "chunked 100 MB: {answer:?}");
    sample_rss(&aggregator);

    // A 1 MB query string.
    let head = format!("GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20));
    let answer = send_raw(http, &head, 0, false);
    assert!(status_code(&answer).is_some_and(|s| (400..500).contains(&s)), "1 MB query string: {answer:?}");
    let long = format!("/api/v1/query?query={}", "a".repeat(40 << 10));
    assert_eq!(aggregator.get(&long).map(|r| r.0), Some(414), "over http.max_query_bytes");

    // 10,000 nested parentheses, as a form body.
    let nested = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let (status, body) = http_call(
        "POST",
        &format!("http://{http}/api/v1/query"),
        None,
        "application/x-www-form-urlencoded",
        format!("query={}", encode(&nested)).as_bytes(),
    )
    .expect("the aggregator answers a deep query");
    // Deeper than the engine evaluates (`MAX_EXPRESSION_DEPTH`): refused as a bad query, not a crash.
    assert!(status == 400 || status == 422, "{status}: {body}");
    assert!(body.contains(r#""status":"error""#) && body.contains("deep"), "{body}");
    sample_rss(&aggregator);

    // Random bytes to remote_write.
    let mut garbage = vec![0u8; 64 << 10];
    for byte in garbage.iter_mut() {
        *byte = fastrand::u8(..);
    }
    let (status, _) = http_call(
        "POST",
        &format!("http://{http}/api/v1/write"),
        Some(&editor.token),
        "application/x-protobuf",
        &garbage,
    )
    .expect("reachable");
    assert_eq!(status, 400);

    // 500 idle connections: served around, then closed by the header read timeout.
    let mut idle: Vec<TcpStream> = (0..500).filter_map(|_| TcpStream::connect(http).ok()).collect();
    assert_eq!(idle.len(), 500);
    let (status, _) = aggregator.get("/api/v1/query?query=up").expect("queries go on with 500 idle connections");
    assert_eq!(status, 200);
    let open = wait_for(Duration::from_secs(5), || {
        Some(aggregator.self_metric("herd_http_open_connections")).filter(|&open| open >= 500.0)
    });
    assert!(open.is_some(), "{} open connections", aggregator.self_metric("herd_http_open_connections"));
    sample_rss(&aggregator);
    let closed_by_server = wait_for(Duration::from_secs(20), || {
        let mut closed = 0;
        for stream in idle.iter_mut() {
            stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            if matches!(stream.read(&mut [0u8; 1]), Ok(0)) {
                closed += 1;
            }
        }
        (closed == 500).then_some(())
    });
    assert!(closed_by_server.is_some(), "idle connections were not closed after http.header_read_timeout");
    drop(idle);

    // Ingestion went on throughout: no gap in the agent's series.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 1000;
    let times: Vec<i64> =
        sample_times(&aggregator, steady, "5m").into_iter().filter(|&t| t >= started_ms && t <= ended_ms).collect();
    assert!(!times.is_empty(), "no samples during the test");
    assert!(gaps(&times, 2000).is_empty(), "ingestion stalled: {:?}", gaps(&times, 2000));
    sample_rss(&aggregator);
    assert!(peak_rss > 0 && peak_rss < RSS_CEILING_BYTES, "peak RSS {} MiB", peak_rss >> 20);
    println!("aggregator peak RSS during the hostile test: {} MiB", peak_rss >> 20);
    assert_eq!(aggregator.get("/-/ready").map(|r| r.0), Some(200));
}
