//! The HTTP port over TLS: client certificates from the fleet CA as
//! credentials (`cert issue --client` named in `[[http.client_certificates]]`;
//! agents' certificates and unlisted ones give no role; revoked ones are
//! refused), bearer tokens over HTTPS, and the certificate read again on SIGHUP.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_tests::{
    HttpToken, Pki, Process, aggregator_cli, free_tcp_port, free_udp_port, get_with, http_get, https_agent, wait_for,
};

/// The DER of the certificate the server at `addr` presents (as `localhost`).
fn served_certificate(addr: SocketAddr, ca_file: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    stream.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    connection.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn client_certificates_and_tokens_over_https_and_the_certificate_reloads_on_sighup() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_server("localhost");
    pki.issue_agent("a1");
    let dir = pki.dir.to_str().unwrap().to_owned();
    for name in ["ops", "intruder"] {
        aggregator_cli(&["cert", "issue", "--client", name, "--ca-dir", &dir]);
    }
    let other = Pki::create(work.path().join("other-pki"));
    aggregator_cli(&["cert", "issue", "--client", "ops", "--ca-dir", other.dir.to_str().unwrap()]);
    let (admin, admin_toml) = HttpToken::create(work.path(), "ada", "admin");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let config = work.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nanonymous_role = \"none\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n\
             [[http.client_certificates]]\nname = \"ops\"\nrole = \"admin\"\n\
             [[http.client_certificates]]\nname = \"a1\"\nrole = \"admin\"\n{admin_toml}\
             [server]\nquic_listen = \"{quic}\"\nhttp_listen = \"{http}\"\nstate_dir = \"{state}\"\n\
             [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
            cert = pki.path("localhost.pem").display(),
            key = pki.path("localhost-key.pem").display(),
            ca = pki.path("ca.pem").display(),
            state = work.path().join("state").display(),
        ),
    )
    .unwrap();
    let aggregator =
        Process::spawn("aggregator", "herd-aggregator", &["serve", "--config", config.to_str().unwrap()], work.path());
    let ca = pki.path("ca.pem");
    let base = format!("https://localhost:{}", http.port());
    let plain = https_agent(&ca, None);
    let ready = wait_for(Duration::from_secs(20), || {
        get_with(&plain, &format!("{base}/-/ready"), None).filter(|(s, _)| *s == 200)
    });
    assert!(ready.is_some(), "not ready over https:\n{}", aggregator.log());

    assert!(
        http_get(&format!("http://{http}/api/v1/query?query=1")).is_none_or(|(status, _)| status != 200),
        "plain HTTP is not served on the TLS port"
    );
    let tokens = format!("{base}/api/v1/identity/tokens");
    assert_eq!(get_with(&plain, &tokens, None).map(|r| r.0), Some(401));
    assert_eq!(get_with(&plain, &tokens, Some(&admin.token)).map(|r| r.0), Some(200), "bearer tokens over HTTPS");
    let with_cert = |name: &str, pki: &Pki| {
        https_agent(&ca, Some((&pki.path(&format!("{name}.pem")), &pki.path(&format!("{name}-key.pem")))))
    };
    let ops = with_cert("ops", &pki);
    assert_eq!(get_with(&ops, &tokens, None).map(|r| r.0), Some(200), "the ops client certificate is an admin");
    assert_eq!(get_with(&with_cert("intruder", &pki), &tokens, None).map(|r| r.0), Some(401), "unlisted");
    assert_eq!(
        get_with(&with_cert("a1", &pki), &tokens, None).map(|r| r.0),
        Some(401),
        "an agent certificate is not an HTTP client's"
    );
    assert_eq!(
        get_with(&with_cert("ops", &other), &tokens, None),
        None,
        "another CA's certificate fails the handshake"
    );

    // Revoking the client certificate takes its role away.
    let revoke = ops
        .post(format!("{base}/api/v1/identity/revocations"))
        .header("Content-Type", "application/json")
        .send(&br#"{"name":"ops"}"#[..])
        .map(|r| r.status().as_u16());
    assert_eq!(revoke.ok(), Some(200));
    assert_eq!(get_with(&with_cert("ops", &pki), &tokens, None).map(|r| r.0), Some(401), "revoked");

    // A renewed server certificate is served after SIGHUP, without a restart.
    let before = served_certificate(http, &ca);
    aggregator_cli(&["cert", "issue", "--server", "localhost", "--san", "127.0.0.1", "--ca-dir", &dir, "--force"]);
    let status = std::process::Command::new("kill").args(["-HUP", &aggregator.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let renewed = wait_for(Duration::from_secs(5), || {
        let served = served_certificate(http, &ca);
        (served != before).then_some(served)
    });
    assert!(renewed.is_some(), "still the old certificate after SIGHUP:\n{}", aggregator.log());
    assert_eq!(get_with(&https_agent(&ca, None), &tokens, Some(&admin.token)).map(|r| r.0), Some(200));
}
