//! TLS as scanners and clients judge it: the server's own order of cipher suites,
//! resumption for any number of clients (stateless tickets whose keys survive SIGHUP),
//! ALPN, a stapled OCSP response, and a certificate made at start-up whose logged
//! fingerprint is the one clients see. The client is rustls.

mod common;

use std::sync::Arc;

use common::tls::{self as tls, Pki};
use common::{ServerProcess, TestServer};
use kv_server::{Config, Echo};
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::HandshakeKind;

fn tls_server(pki: &Pki, configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        tls: Some(pki.write_server(1)),
        ..Config::default()
    };
    configure(&mut config);
    TestServer::start_with(config, Box::new(Echo))
}

/// A client configuration trusting the test CA, with `provider` and `versions`.
fn client_with(
    pki: &Pki,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client configuration like `tls::client_config`'s, with these suites in this order.
fn preferring(pki: &Pki, suites: Vec<rustls::SupportedCipherSuite>) -> Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    client_with(
        pki,
        provider,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

#[test]
fn the_server_chooses_the_suite_in_its_own_order() {
    let pki = Pki::new("order");
    let server = tls_server(&pki, |_| {});
    let chacha_first = preferring(
        &pki,
        vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
    );
    let stream = tls::connect(server.addr, &chacha_first).unwrap();
    let suite = stream.conn.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    let tls12_chacha_first = preferring(
        &pki,
        vec![
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ],
    );
    let stream = tls::connect(server.addr, &tls12_chacha_first).unwrap();
    let suite = stream.conn.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(
        suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
}

/// Each of `clients` connects once (taking its tickets with an echo), then each connects
/// again after all the others' handshakes: every second connection must resume.
fn all_resume(
    server: &TestServer,
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
    clients: usize,
) {
    let configs: Vec<_> = (0..clients)
        .map(|_| tls::client_config(pki.ca_der(), Some(version), None))
        .collect();
    for config in &configs {
        let mut stream = tls::connect(server.addr, config).unwrap();
        tls::assert_echo(&mut stream, b"first\n");
        assert_eq!(stream.conn.handshake_kind(), Some(HandshakeKind::Full));
    }
    let resumed = configs
        .iter()
        .filter(|config| {
            let mut stream = tls::connect(server.addr, config).unwrap();
            tls::assert_echo(&mut stream, b"again\n");
            stream.conn.handshake_kind() == Some(HandshakeKind::Resumed)
        })
        .count();
    assert_eq!(
        resumed, clients,
        "{resumed} of {clients} resumed over {version:?}"
    );
}

#[test]
fn a_thousand_clients_each_resume_after_a_thousand_other_handshakes() {
    let pki = Pki::new("resume13");
    let server = tls_server(&pki, |_| {});
    all_resume(&server, &pki, &rustls::version::TLS13, 1000);
}

#[test]
fn tls_1_2_clients_resume_by_ticket_past_the_session_cache() {
    let pki = Pki::new("resume12");
    let server = tls_server(&pki, |_| {});
    all_resume(&server, &pki, &rustls::version::TLS12, 400);
}

#[test]
fn a_ticket_issued_before_sighup_resumes_after_it() {
    let pki = Pki::new("resume_reload");
    let files = pki.write_server(1);
    let server = ServerProcess::start(&[
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ]);
    let config = tls::client_config(pki.ca_der(), None, None);
    let mut first = tls::connect(server.addr(), &config).unwrap();
    tls::assert_echo(&mut first, b"ticket please\n");
    drop(first);
    pki.write_server(2);
    server.signal(libc::SIGHUP);
    server.wait_log("reloaded");
    let mut after = tls::connect(server.addr(), &config).unwrap();
    tls::assert_echo(&mut after, b"resumed?\n");
    assert_eq!(after.conn.handshake_kind(), Some(HandshakeKind::Resumed));
}

/// A client offering these ALPN protocols.
fn offering(pki: &Pki, protocols: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut config = (*tls::client_config(pki.ca_der(), None, None)).clone();
    config.alpn_protocols = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

#[test]
fn alpn_agrees_refuses_a_client_with_none_of_ours_and_serves_one_offering_none() {
    let pki = Pki::new("alpn");
    let server = tls_server(&pki, |config| {
        config.tls_alpn = vec!["h2".into(), "http/1.1".into()];
    });
    let mut h2 = tls::connect(server.addr, &offering(&pki, &["http/1.1", "h2"])).unwrap();
    assert_eq!(
        h2.conn.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server's order"
    );
    tls::assert_echo(&mut h2, b"over h2\n");
    let mut none = tls::connect(server.addr, &offering(&pki, &[])).unwrap();
    assert_eq!(none.conn.alpn_protocol(), None);
    tls::assert_echo(&mut none, b"without ALPN\n");
    let refused = tls::connect(server.addr, &offering(&pki, &["spdy/3"]));
    let error = refused.map(drop).expect_err("refused");
    assert!(error.contains("NoApplicationProtocol"), "{error}");
}

/// What a test's server certificate verifier checks of the certificate and the stapled
/// OCSP response; handshake signatures are verified as rustls does.
type Check = dyn Fn(&rustls::pki_types::CertificateDer<'_>, &[u8]) -> Result<(), rustls::Error>
    + Send
    + Sync;

struct Checking {
    check: Box<Check>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Checking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checking")
    }
}

impl rustls::client::danger::ServerCertVerifier for Checking {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        (self.check)(end_entity, ocsp_response)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration whose server certificates `check` judges.
fn checking(check: Box<Check>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Checking {
        check,
        provider: Arc::clone(&provider),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// The OCSP response a fresh connection is stapled (the certificate taken as it comes: the
/// other tests check it).
fn stapled(addr: std::net::SocketAddr) -> Vec<u8> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    let config = checking(Box::new(move |_, ocsp| {
        *keep.lock().unwrap() = ocsp.to_vec();
        Ok(())
    }));
    let mut stream = tls::connect(addr, &config).unwrap();
    tls::assert_echo(&mut stream, b"stapled\n");
    let seen = seen.lock().unwrap().clone();
    seen
}

/// A client configuration that accepts exactly the certificate with this SHA-256
/// fingerprint (colon-separated hex), and no other.
fn pinned_by_fingerprint(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    let pin = fingerprint.to_owned();
    checking(Box::new(move |end_entity, _| {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity);
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        if hex.join(":") == pin {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "fingerprint {} is not {pin}",
                hex.join(":")
            )))
        }
    }))
}

#[test]
fn the_ocsp_response_is_stapled_and_reloaded_on_sighup() {
    let pki = Pki::new("ocsp");
    let files = pki.write_server(1);
    let ocsp = pki.dir.join("server.ocsp");
    std::fs::write(&ocsp, b"\x30\x03\x0a\x01\x00 first response").unwrap();
    let server = ServerProcess::start(&[
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
        "--tls-ocsp",
        ocsp.to_str().unwrap(),
    ]);
    assert_eq!(
        stapled(server.addr()),
        b"\x30\x03\x0a\x01\x00 first response"
    );
    std::fs::write(&ocsp, b"\x30\x03\x0a\x01\x00 renewed").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("reloaded");
    assert_eq!(stapled(server.addr()), b"\x30\x03\x0a\x01\x00 renewed");
}

#[test]
fn a_self_signed_certificate_is_made_and_its_logged_fingerprint_is_what_clients_see() {
    let server = ServerProcess::start(&["--tls-self-signed", "--tls-name", "kv.test"]);
    let line = server.log_line("fingerprint");
    assert!(line.contains("made now for kv.test"), "{line}");
    let logged = line.rsplit(' ').next().unwrap().to_owned();
    // A client that trusts that one certificate, as a pinning client does.
    let config = pinned_by_fingerprint(&logged);
    let name = rustls::pki_types::ServerName::try_from("kv.test").unwrap();
    let socket = common::connect(server.addr());
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    tls::assert_echo(&mut stream, b"pinned\n");
}

/// A TLS 1.3 client configuration trusting the test CA that offers only `group` for key
/// exchange.
fn only_group(
    pki: &Pki,
    group: &'static dyn rustls::crypto::SupportedKxGroup,
) -> Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![group],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    client_with(pki, provider, &[&rustls::version::TLS13])
}

/// The hybrid post-quantum key exchange that Chrome, Firefox and Cloudflare use by default
/// is offered, and preferred: a client offering nothing else is served with it, and a
/// client offering it beside X25519 agrees on it.
#[test]
fn a_client_limited_to_the_post_quantum_hybrid_completes_a_handshake() {
    use rustls::crypto::aws_lc_rs::kx_group;
    let pki = Pki::new("hybrid");
    let server = tls_server(&pki, |_| {});
    let mut hybrid =
        tls::connect(server.addr, &only_group(&pki, kx_group::X25519MLKEM768)).unwrap();
    tls::assert_echo(&mut hybrid, b"post-quantum\n");
    let group = hybrid.conn.negotiated_key_exchange_group().unwrap().name();
    assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
    let mut classic = tls::connect(server.addr, &only_group(&pki, kx_group::X25519)).unwrap();
    tls::assert_echo(&mut classic, b"classic\n");
    let default = tls::connect(server.addr, &tls::client_config(pki.ca_der(), None, None)).unwrap();
    let group = default.conn.negotiated_key_exchange_group().unwrap().name();
    assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
}
