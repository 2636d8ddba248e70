//! The `--etcd*` flags `agent` and `standby` share, and the client they make.

use std::{path::PathBuf, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::cluster::ClusterError;

/// Cluster mode's flags: where etcd is and how to log in.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EtcdArgs {
    /// Cluster mode: the etcd client URLs (`http://IP:2379`, or `https://`
    /// with `--etcd-ca`), repeated or comma-separated. Ownership of every
    /// service is then decided in etcd, so several standbys can protect one
    /// primary and never both take over. Without it, a pair needs no etcd.
    #[arg(long = "etcd", value_name = "URL", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that etcd's server certificates are checked
    /// against; needed for `https://` endpoints.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name (etcd's user authentication).
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (its first line).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Key prefix of connmirror's records in etcd.
    #[arg(long, value_name = "PREFIX", default_value = "/connmirror")]
    pub etcd_prefix: String,
    /// Milliseconds an etcd request may take before it counts as no quorum.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub etcd_timeout: u64,
    /// Seconds this node's lease lasts without renewal (its registration
    /// then disappears from `connmirror status --cluster`).
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    pub lease_ttl: u32,
}

impl EtcdArgs {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// The endpoints, for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.etcd_timeout.max(1))
    }

    /// A client for the endpoints. Every request it makes needs a leader
    /// (`require_leader`): a member cut off from the majority refuses at
    /// once instead of answering from its stale copy.
    pub async fn connect(&self) -> Result<Client, ClusterError> {
        let mut options = ConnectOptions::new()
            .with_timeout(self.timeout())
            .with_connect_timeout(self.timeout())
            .with_require_leader(true);
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            let password = read(file, "--etcd-password-file")?;
            let password = password.lines().next().unwrap_or_default().to_owned();
            options = options.with_user(user.clone(), password);
        }
        if let Some(tls) = self.tls()? {
            options = options.with_tls(tls);
        }
        let connect = Client::connect(self.endpoints.clone(), Some(options));
        match tokio::time::timeout(self.timeout(), connect).await {
            Ok(client) => client.map_err(|err| self.unreachable(&err)),
            Err(_) => Err(self.no_answer()),
        }
    }

    /// The TLS settings, when a CA or a client certificate is given.
    fn tls(&self) -> Result<Option<TlsOptions>, ClusterError> {
        if self.etcd_ca.is_none() && self.etcd_cert.is_none() {
            return Ok(None);
        }
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.etcd_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-ca")?));
        }
        if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
            let identity = Identity::from_pem(read(cert, "--etcd-cert")?, read(key, "--etcd-key")?);
            tls = tls.identity(identity);
        }
        Ok(Some(tls))
    }

    /// A request that timed out, as [`ClusterError::Unreachable`].
    pub fn no_answer(&self) -> ClusterError {
        ClusterError::Unreachable {
            endpoints: self.endpoint_list(),
            reason: format!("no answer within {} ms", self.etcd_timeout),
        }
    }

    /// An etcd client error: [`ClusterError::Refused`] when etcd turned the
    /// credentials or permissions down, else [`ClusterError::Unreachable`].
    pub fn unreachable(&self, err: &etcd_client::Error) -> ClusterError {
        let (endpoints, reason) = (self.endpoint_list(), err.to_string());
        match err {
            etcd_client::Error::GRpcStatus(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) =>
            {
                ClusterError::Refused {
                    endpoints,
                    reason: status.message().to_owned(),
                }
            }
            _ => ClusterError::Unreachable { endpoints, reason },
        }
    }
}

/// Reads a file a flag names.
fn read(path: &PathBuf, flag: &'static str) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|source| ClusterError::File {
        flag,
        path: path.clone(),
        source,
    })
}
