//! Client certificates refused with a reason a person can act on. rustls refuses X.509
//! version 1 certificates (what `openssl x509 -req` makes without extensions) as webpki
//! does, and the client only sees "certificate unknown"; nginx and HAProxy accept them. This
//! verifier hands every decision to the one it wraps and, when a refused certificate is
//! version 1, logs its subject and how to reissue it.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::warning::client_caused;

pub(super) struct ExplainingVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for ExplainingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExplainingVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ExplainingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if verdict.is_err() {
            if let Some(subject) = version_1_subject(end_entity) {
                client_caused!(
                    log::Level::Warn,
                    "a client certificate ({subject}) is X.509 version 1, which is refused \
                     here; reissue it as version 3, which any extension makes: openssl x509 \
                     -req ... -extfile client.ext, with extendedKeyUsage=clientAuth in \
                     client.ext (docs/protocols.md#tls)"
                );
            }
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The subject of `der` (its common name, organisation and country) when it is an X.509
/// version 1 certificate, which has no version field; `None` for any other, or for bytes
/// that are not a certificate.
fn version_1_subject(der: &[u8]) -> Option<String> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (mut tbs, _) = element(certificate, SEQUENCE)?;
    // A version 2 or 3 certificate begins with its version, tagged [0].
    if tbs.first() == Some(&VERSION_TAG) {
        return None;
    }
    for _ in 0..4 {
        // The serial number, the signature algorithm, the issuer and the validity.
        let (_, _, rest) = any_element(tbs)?;
        tbs = rest;
    }
    let (subject, _) = element(tbs, SEQUENCE)?;
    Some(render_name(subject))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION_TAG: u8 = 0xa0;

/// The next DER element of `input`: its tag, its contents and what follows it.
fn any_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &byte| length << 8 | usize::from(byte));
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// The contents of the next element, which must have `tag`, and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = any_element(input)?;
    (found == tag).then_some((contents, rest))
}

/// A Name as `CN=..., O=..., C=...`: the attributes a person recognises a certificate by.
fn render_name(mut name: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((set, rest)) = element(name, SET) {
        name = rest;
        let mut attributes = set;
        while let Some((attribute, rest)) = element(attributes, SEQUENCE) {
            attributes = rest;
            let Some((oid, value)) = element(attribute, OID) else {
                continue;
            };
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x06] => "C",
                _ => continue,
            };
            if let Some((_, text, _)) = any_element(value) {
                parts.push(format!("{label}={}", String::from_utf8_lossy(text)));
            }
        }
    }
    if parts.is_empty() {
        "no common name".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_3_certificate_is_not_taken_for_version_1() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert_eq!(version_1_subject(made.cert.der()), None);
        assert_eq!(version_1_subject(b"not a certificate"), None);
        assert_eq!(version_1_subject(&[]), None);
    }
}
