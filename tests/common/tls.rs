//! A throw-away TLS certificate for the HTTPS/`wss://` tests (tests/tls.rs, the browser suite).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{crypto, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files into a fresh
/// directory that is removed on drop.
pub struct TestCert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new(tag: &str) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("rcgen makes a self-signed certificate for valid names");
        let dir = std::env::temp_dir().join(format!("roomd-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert.pem");
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key.pem");
        Self {
            dir,
            der: ck.cert.der().clone(),
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub fn config(&self) -> roomd::Config {
        roomd::Config {
            tls_cert: Some(self.cert()),
            tls_key: Some(self.key()),
            // Media shards on ports of their own (tests run in parallel).
            rtc_udp_port: 0,
            ..roomd::Config::default()
        }
    }

    /// A client that trusts exactly this certificate.
    pub fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("a freshly generated certificate is a valid trust anchor");
        let config =
            ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
