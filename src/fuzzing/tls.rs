//! The TLS layer's property (`tls_records`) and what it needs: a real in-memory handshake
//! with a rustls client, and the certificates both sides are built from, made once.

use super::*;
use crate::connection::tls::TlsLayer;

/// The TLS layer, as a connection drives it: records split at any point give back exactly
/// the plaintext that was sealed, answers sealed by the layer open at the client, and a
/// damaged record is refused, never passed up. The first byte picks the mode: raw bytes
/// fed to a fresh layer (it must refuse or wait, and never loop), a real client's
/// records of the rest of the input after a real handshake, or those records with one byte
/// flipped at a place the input chooses.
pub fn tls_records(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut layer = TlsLayer::new(fixture::server(), far_deadline()).expect("a session");
    if mode % 3 == 0 {
        let mut plaintext = [0u8; 4096];
        for read in chunks(rest, &cuts(data, rest.len(), 8)) {
            let mut left = read;
            while !left.is_empty() {
                let Ok(fed) = layer.feed(left) else {
                    return;
                };
                while layer.take_plaintext(&mut plaintext) > 0 {}
                if fed.taken == 0 {
                    break;
                }
                left = &left[fed.taken..];
            }
        }
        return;
    }
    let mut client = fixture::client();
    handshake(&mut client, &mut layer);
    client.writer().write_all(rest).unwrap();
    let mut records = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut records).unwrap();
    }
    let mut damaged = mode % 3 == 2 && !records.is_empty();
    let mut version_flipped = false;
    if damaged {
        let at = cuts(data, records.len() - 1, 1)[0];
        records[at] ^= 0x55;
        // A record's legacy version is to be ignored in TLS 1.3 (RFC 8446, 5.1); rustls
        // refuses some values there and takes others. Either is right, as long as what it
        // takes is exact.
        if in_legacy_version(&records, at) {
            damaged = false;
            version_flipped = true;
        }
    }
    let mut opened = Vec::new();
    let mut plaintext = [0u8; 4096];
    let mut refused = false;
    'reads: for read in chunks(&records, &cuts(data, records.len(), 8)) {
        let mut left = read;
        while !left.is_empty() {
            let fed = match layer.feed(left) {
                Ok(fed) => fed,
                Err(_) => {
                    refused = true;
                    break 'reads;
                }
            };
            loop {
                let taken = layer.take_plaintext(&mut plaintext);
                if taken == 0 {
                    break;
                }
                opened.extend_from_slice(&plaintext[..taken]);
            }
            assert!(
                fed.taken > 0,
                "a session that takes nothing of a valid stream"
            );
            left = &left[fed.taken..];
        }
    }
    assert!(rest.starts_with(&opened), "plaintext that was never sealed");
    if damaged {
        // Refused, or, when the flip made a record's declared length longer, still
        // waiting for the rest: never the whole plaintext.
        assert!(
            refused || opened.len() < rest.len(),
            "a damaged record was accepted"
        );
        return;
    }
    if refused && version_flipped {
        return;
    }
    assert!(!refused, "a valid record was refused");
    assert_eq!(opened, rest);
    // Every record is opened: the budget counts nothing more for rustls.
    assert_eq!(
        layer.held(),
        0,
        "bytes still counted after every record was opened"
    );
    // The way back: sealed by the layer, opened by the client.
    layer.seal(&opened).unwrap();
    let mut answer = Vec::new();
    layer.take_records(&mut answer);
    let mut answer = &answer[..];
    while !answer.is_empty() {
        client.read_tls(&mut answer).unwrap();
        client
            .process_new_packets()
            .expect("records the client opens");
    }
    let mut back = Vec::new();
    let _ = client.reader().read_to_end(&mut back);
    assert_eq!(back, rest);
}

/// Whether `at` is in the two legacy version bytes of a record's header in `records`.
fn in_legacy_version(records: &[u8], at: usize) -> bool {
    let mut start = 0;
    while start + 5 <= records.len() {
        if at == start + 1 || at == start + 2 {
            return true;
        }
        let len = usize::from(u16::from_be_bytes([records[start + 3], records[start + 4]]));
        start += 5 + len;
    }
    false
}

/// Runs a handshake between `client` and `layer` in memory.
fn handshake(client: &mut rustls::ClientConnection, layer: &mut TlsLayer) {
    let mut flight = Vec::new();
    for _ in 0..8 {
        if !client.is_handshaking() && !layer_handshaking(layer) {
            return;
        }
        flight.clear();
        while client.wants_write() {
            client.write_tls(&mut flight).unwrap();
        }
        let mut left = &flight[..];
        while !left.is_empty() {
            let fed = layer.feed(left).expect("a valid client hello");
            left = &left[fed.taken..];
        }
        flight.clear();
        layer.take_records(&mut flight);
        let mut left = &flight[..];
        while !left.is_empty() {
            client.read_tls(&mut left).unwrap();
            client.process_new_packets().expect("a valid server flight");
        }
    }
    panic!("the handshake did not end");
}

fn layer_handshaking(layer: &TlsLayer) -> bool {
    layer.handshake_deadline().is_some()
}

fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The fixed certificate the TLS property serves (`fuzz/tls/`, a throwaway), and a client
/// that trusts it.
mod fixture {
    use std::sync::{Arc, OnceLock};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    const CERT: &str = include_str!("../../fuzz/tls/cert.pem");
    const KEY: &str = include_str!("../../fuzz/tls/key.pem");

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    pub fn server() -> Arc<rustls::ServerConfig> {
        static SERVER: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
        Arc::clone(SERVER.get_or_init(|| {
            let chain = vec![CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            Arc::new(config)
        }))
    }

    pub fn client() -> rustls::ClientConnection {
        static CLIENT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
        let config = CLIENT.get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap())
                .unwrap();
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        });
        let name = ServerName::try_from("localhost").unwrap();
        rustls::ClientConnection::new(Arc::clone(config), name).unwrap()
    }
}
