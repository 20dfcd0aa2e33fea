//! What TLS serves with: the certificate chain and its key (`--tls-cert`, `--tls-key`) and,
//! for mutual TLS, the roots that client certificates must chain to (`--tls-client-ca`),
//! read from PEM files at start-up and again on SIGHUP. A reload builds a whole new rustls
//! configuration or nothing: a file that fails keeps the one in force, and connections
//! already established keep the configuration they began with (each holds its own `Arc`).
//!
//! The crypto provider is rustls' `aws-lc-rs` one, for the hybrid post-quantum key
//! exchange X25519MLKEM768 that Chrome, Firefox and Cloudflare negotiate by default, offered
//! first; `ring` has none. Measured against `ring` (docs/protocols.md): a full handshake
//! costs the same with ECDSA and 0.7x with RSA, the hybrid adds about 60 us to one, a
//! clean release build takes 30 s longer and the binary grows by 2.2 MB.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::Ticketer;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

mod explaining;

use explaining::ExplainingVerifier;

/// The files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the roots a client's certificate must chain to; with it, every client must
    /// present one.
    pub client_ca: Option<PathBuf>,
    /// DER: an OCSP response for the certificate, stapled to every handshake.
    pub ocsp: Option<PathBuf>,
}

/// What every TLS configuration of a server shares, whatever its certificate: the ALPN
/// protocols it offers, and the keys its session tickets are sealed with, which outlive a
/// reload so that a ticket issued before SIGHUP still resumes after it.
#[derive(Clone)]
pub(crate) struct Shared {
    pub alpn: Vec<Vec<u8>>,
    pub tickets: Arc<dyn ProducesTickets>,
}

impl Shared {
    pub fn new(alpn: &[String]) -> Result<Shared, LoadError> {
        let tickets =
            Ticketer::new().map_err(|e| failed(Path::new("(session tickets)"), e.to_string()))?;
        Ok(Shared {
            alpn: alpn
                .iter()
                .map(|protocol| protocol.as_bytes().to_vec())
                .collect(),
            tickets,
        })
    }

    /// What `config` was made with, for the next configuration to share.
    pub fn of(config: &ServerConfig) -> Shared {
        Shared {
            alpn: config.alpn_protocols.clone(),
            tickets: Arc::clone(&config.ticketer),
        }
    }
}

/// The crypto provider every configuration is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Sessions kept for TLS 1.2 clients that resume by session ID rather than by ticket:
/// rustls' default, a fixed cost of a few tens of KiB.
const SESSION_CACHE_ENTRIES: usize = 256;

/// What every configuration does alike: the server's own order of cipher suites (the most
/// secure first, whatever the client prefers), stateless tickets with rotating keys, so
/// that any number of clients resume, and the ALPN protocols.
fn finish(mut config: ServerConfig, shared: &Shared) -> Arc<ServerConfig> {
    config.ignore_client_order = true;
    config.ticketer = Arc::clone(&shared.tickets);
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.alpn_protocols = shared.alpn.clone();
    Arc::new(config)
}

/// A file that could not be used, and why.
#[derive(Debug)]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for LoadError {}

fn failed(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the files and builds the configuration every new TLS connection starts from.
pub(crate) fn load(files: &TlsFiles, shared: &Shared) -> Result<Arc<ServerConfig>, LoadError> {
    let provider = provider();
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        failed(
            &files.key,
            pem_reason(e, "no private key in it (expected PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| failed(&files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for root in certificates(path)? {
                roots
                    .add(root)
                    .map_err(|e| failed(path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| failed(path, e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(ExplainingVerifier { inner: verifier }))
        }
    };
    let ocsp = match &files.ocsp {
        Some(path) => std::fs::read(path).map_err(|e| failed(path, e.to_string()))?,
        None => Vec::new(),
    };
    let config = builder
        .with_single_cert_with_ocsp(chain, key, ocsp)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => failed(
                &files.key,
                format!(
                    "this key does not match the certificate in {}",
                    files.cert.display()
                ),
            ),
            other => failed(&files.key, format!("unusable private key: {other}")),
        })?;
    Ok(finish(config, shared))
}

/// A certificate made at start-up for `names` (DNS names or IP addresses), with a fresh
/// ECDSA P-256 key, valid for a year: for tests and trials, as ncat's `--ssl` makes one.
/// Returns the configuration and the certificate's SHA-256 fingerprint, for a client to
/// pin.
pub(crate) fn self_signed(
    names: &[String],
    shared: &Shared,
) -> Result<(Arc<ServerConfig>, String), LoadError> {
    let invalid = |e: rcgen::Error| failed(Path::new("(--tls-self-signed)"), e.to_string());
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(invalid)?;
    let (year, month, day) = civil_date(std::time::SystemTime::now());
    // From yesterday, so that a client whose clock is a little behind takes it, for a year.
    params.not_before =
        rcgen::date_time_ymd(year, month, day) - std::time::Duration::from_secs(86_400);
    params.not_after = rcgen::date_time_ymd(year + 1, month, day.min(28));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kv_server self-signed");
    let key_pair = rcgen::KeyPair::generate().map_err(invalid)?;
    let cert = params.self_signed(&key_pair).map_err(invalid)?;
    let der = cert.der().clone();
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(vec![der], key)
        })
        .map_err(|e| failed(Path::new("(--tls-self-signed)"), e.to_string()))?;
    Ok((finish(config, shared), fingerprint))
}

/// Every certificate in a PEM file, at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(path, pem_reason(e, "")))?;
    if chain.is_empty() {
        return Err(failed(
            path,
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

fn pem_reason(error: pem::Error, none_found: &str) -> String {
    match error {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound if !none_found.is_empty() => none_found.to_owned(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The calendar date (UTC) of `time`: year, month (1-12), day (1-31).
fn civil_date(time: std::time::SystemTime) -> (i32, u8, u8) {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    // Howard Hinnant's days_from_civil, inverted: eras of 400 years from 0000-03-01.
    let days = (seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let at = |seconds| std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        assert_eq!(civil_date(at(0)), (1970, 1, 1));
        assert_eq!(civil_date(at(951_782_400)), (2000, 2, 29));
        assert_eq!(civil_date(at(1_796_256_000)), (2026, 12, 3));
        assert_eq!(civil_date(at(1_798_761_599)), (2026, 12, 31));
        assert_eq!(civil_date(at(1_798_761_600)), (2027, 1, 1));
    }
}
