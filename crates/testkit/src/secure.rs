//! Servers that ask for passwords (SCRAM) and, optionally, take connections over TLS only,
//! with certificates from a throwaway CA made here with `openssl`: what managed services ask
//! of their clients. The `postgres` superuser keeps its trust login, so the harness itself can
//! still set servers up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::template::run_as;
use crate::{TestCluster, TestServer};
use shoal_local::StopMode;

/// A CA and the certificate every test server presents (for `127.0.0.1` and `localhost`).
#[derive(Debug, Clone)]
pub struct Certificates {
    /// Clients verify servers against it (`sslrootcert`).
    pub ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("shoal-testkit: could not run openssl ({e}); install openssl"));
    assert!(
        out.status.success(),
        "shoal-testkit: openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certificates {
    /// A CA and a server certificate signed by it, in `dir`, readable by the server account.
    pub fn make(dir: &Path) -> Certificates {
        fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=shoal test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        fs::write(
            dir.join("san.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.crt",
            ],
        );
        let certificates = Certificates {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        // The server reads them as its own account; the key must be private to it.
        use std::os::unix::fs::PermissionsExt;
        for file in [&certificates.server_cert, &certificates.server_key] {
            run_as().chown(file).unwrap();
        }
        fs::set_permissions(&certificates.server_key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&certificates.ca_cert, fs::Permissions::from_mode(0o644)).unwrap();
        certificates
    }
}

impl TestServer {
    /// From now on every role but `postgres` logs in with a SCRAM password, over TLS only when
    /// `tls` is given. Restarts the server (same port).
    pub fn require_passwords(&self, tls: Option<&Certificates>) {
        let method = "scram-sha-256";
        let mut hba = String::from(
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n",
        );
        let kind = if tls.is_some() { "hostssl" } else { "host" };
        hba.push_str(&format!(
            "{kind} all all 127.0.0.1/32 {method}\n{kind} replication all 127.0.0.1/32 {method}\n"
        ));
        let hba_file = self.data_dir.join("pg_hba.conf");
        fs::write(&hba_file, hba).unwrap();
        run_as().chown(&hba_file).unwrap();
        let conf = self.data_dir.join(shoal_local::SHOAL_CONF);
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str("password_encryption = 'scram-sha-256'\n");
        if let Some(certificates) = tls {
            text.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                certificates.server_cert.display(),
                certificates.server_key.display()
            ));
        }
        fs::write(&conf, text).unwrap();
        self.stop(StopMode::Fast)
            .unwrap_or_else(|e| panic!("shoal-testkit: could not stop {}: {e}", self.name));
        shoal_local::start(&self.bins, &self.data_dir, &self.log_file)
            .unwrap_or_else(|e| panic!("shoal-testkit: could not restart {}: {e}", self.name));
    }
}

impl TestCluster {
    /// [`TestServer::require_passwords`] on every server.
    pub fn require_passwords(&self, tls: Option<&Certificates>) {
        for server in self.servers() {
            server.require_passwords(tls);
        }
    }
}
