//! TLS to the coordinator and the nodes, with libpq's `sslmode` meanings: `disable`; `prefer`
//! (the default: TLS when the server offers it, unverified) and `require` (TLS, unverified);
//! `verify-ca` (the server's certificate chains to `sslrootcert`) and `verify-full` (and names
//! the host connected to). The same settings go into the connection strings Shoal hands to the
//! servers themselves (postgres_fdw's servers, subscriptions).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::CatalogError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, CatalogError> {
        Ok(match text {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; without TLS is what it mostly gets.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(CatalogError::BadUri(format!(
                    "sslmode {other} is unknown; use disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The TLS part of connection parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// CA certificates (PEM) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The libpq keywords this module takes over from a connection string.
pub const KEYWORDS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsSettings {
    /// Sets one keyword's value (see [`KEYWORDS`]).
    pub fn set(&mut self, keyword: &str, value: &str) -> Result<(), CatalogError> {
        match keyword {
            "sslmode" => self.mode = SslMode::parse(value)?,
            "sslrootcert" => self.root_cert = Some(PathBuf::from(value)),
            "sslcert" => self.client_cert = Some(PathBuf::from(value)),
            "sslkey" => self.client_key = Some(PathBuf::from(value)),
            _ => {}
        }
        Ok(())
    }

    /// The settings as libpq keywords and values, for the connection strings servers use.
    pub fn libpq_options(&self) -> Vec<(&'static str, String)> {
        let mut options = vec![("sslmode", self.mode.as_str().to_string())];
        let paths = [
            ("sslrootcert", &self.root_cert),
            ("sslcert", &self.client_cert),
            ("sslkey", &self.client_key),
        ];
        for (keyword, path) in paths {
            if let Some(path) = path {
                options.push((keyword, path.display().to_string()));
            }
        }
        options
    }

    pub(crate) fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The rustls configuration these settings ask for.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, CatalogError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(format!("setting up TLS: {e}")))?;
        let builder = if self.mode.verifies() {
            let path = self.root_cert.as_deref().ok_or_else(|| {
                tls_error(format!(
                    "sslmode={} needs sslrootcert=FILE, the CA certificates the servers' certificates chain to",
                    self.mode.as_str()
                ))
            })?;
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_error(format!("reading {}: {e}", path.display())))?;
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_error(format!("reading {}: {e}", path.display())))?;
            if self.mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(verifier)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
            }
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls_error(format!("reading {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .map_err(|e| tls_error(format!("using {}: {e}", cert.display())))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(tls_error(
                "sslcert and sslkey go together: give both or neither".into(),
            )),
        }
    }
}

fn tls_error(message: String) -> CatalogError {
    CatalogError::Tls(message)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CatalogError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(format!("reading {}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| tls_error(format!("reading {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// `prefer` and `require`: encryption without verification, as in libpq (the handshake's
/// signatures are still checked, so the session key belongs to whoever holds the certificate).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is verified, the name in the certificate is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_libpq_reads_them() {
        assert_eq!(SslMode::parse("verify-full").unwrap(), SslMode::VerifyFull);
        assert_eq!(SslMode::parse("allow").unwrap(), SslMode::Prefer);
        assert!(SslMode::parse("strict").is_err());
        assert_eq!(SslMode::default(), SslMode::Prefer);
    }

    #[test]
    fn settings_become_libpq_options() {
        let mut settings = TlsSettings::default();
        settings.set("sslmode", "verify-ca").unwrap();
        settings.set("sslrootcert", "/etc/ca.pem").unwrap();
        assert_eq!(
            settings.libpq_options(),
            vec![
                ("sslmode", "verify-ca".to_string()),
                ("sslrootcert", "/etc/ca.pem".to_string())
            ]
        );
    }

    #[test]
    fn verifying_without_a_root_certificate_is_refused() {
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            ..TlsSettings::default()
        };
        let error = settings.client_config().unwrap_err().to_string();
        assert!(error.contains("needs sslrootcert"), "{error}");
    }
}
