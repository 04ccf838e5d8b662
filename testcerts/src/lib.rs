//! Certificates for tests and the lab: a throwaway CA that issues leaf
//! certificates for DNS names and IP literals, current, expired or not yet
//! valid, as PEM strings or files.
//!
//! Test and lab use only: keys are generated in memory, nothing is protected,
//! and every failure panics.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A self-signed certificate authority (ECDSA P-256).
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// When an issued certificate is valid, relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago to 30 days from now.
    Current,
    /// From 30 days ago to yesterday.
    Expired,
    /// From tomorrow to 30 days from now.
    NotYetValid,
}

/// A leaf certificate and its private key.
pub struct Issued {
    /// The leaf certificate then the CA's, as PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl Ca {
    /// A new CA named `name` (its common name), valid from a day ago for a year.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Write the CA certificate to `dir/file`; returns the path.
    pub fn write_cert(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        fs::write(&path, self.cert_pem()).expect("write the CA certificate");
        path
    }

    /// A leaf certificate for server authentication naming `names` (DNS names,
    /// or IP literals such as "127.0.0.1" and "::1") as subject alternative
    /// names; the first is also the common name.
    pub fn issue(&self, names: &[&str], validity: Validity) -> Issued {
        let key = KeyPair::generate().expect("generate the leaf key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = match validity {
            Validity::Current => (now - Duration::days(1), now + Duration::days(30)),
            Validity::Expired => (now - Duration::days(30), now - Duration::days(1)),
            Validity::NotYetValid => (now + Duration::days(1), now + Duration::days(30)),
        };
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Write `dir/{stem}.crt.pem` (leaf then CA) and `dir/{stem}.key.pem`,
    /// replacing what is there; returns (certificate path, key path).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt.pem"));
        let key = dir.join(format!("{stem}.key.pem"));
        fs::write(&cert, &self.cert_pem).expect("write the certificate");
        fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem() {
        let ca = Ca::new("testcerts CA");
        let issued = ca.issue(&["localhost", "127.0.0.1", "::1"], Validity::Current);
        assert_eq!(issued.cert_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(issued.cert_pem.ends_with(&ca.cert_pem()));
        assert!(issued.key_pem.contains("BEGIN PRIVATE KEY"));
        let dir = std::env::temp_dir().join(format!("testcerts-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (cert, key) = issued.write(&dir, "leaf");
        assert_eq!(fs::read_to_string(cert).unwrap(), issued.cert_pem);
        assert_eq!(fs::read_to_string(key).unwrap(), issued.key_pem);
        let ca_path = ca.write_cert(&dir, "ca.pem");
        assert_eq!(fs::read_to_string(ca_path).unwrap(), ca.cert_pem());
        fs::remove_dir_all(&dir).unwrap();
    }
}
