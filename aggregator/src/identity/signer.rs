//! The fleet CA's key in the aggregator: signs agent certificates at
//! enrollment and renewal, with `[identity] agent_cert_lifetime`. Loaded
//! from `[tls] ca_file` and `[identity] ca_key_file`; without the key the
//! aggregator authenticates agents but signs nothing.

use std::time::{Duration, SystemTime};

use herd_common::identity::{self, CertInfo, IdentityError};
use herd_common::tls::{self, PemPair, TlsError};

pub struct Signer {
    ca: PemPair,
    lifetime: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("ca", &self.ca).field("lifetime", &self.lifetime).finish()
    }
}

impl Signer {
    pub fn load(
        ca_file: &std::path::Path,
        ca_key_file: &std::path::Path,
        lifetime: Duration,
    ) -> Result<Self, TlsError> {
        let ca = tls::read_pair(ca_file, ca_key_file)?;
        // Refuse a key that does not belong to the CA now, not at the first enrollment.
        if !identity::key_matches_certificate(&ca).map_err(|e| TlsError::Config(e.to_string()))? {
            return Err(TlsError::Config(format!(
                "{} is not the key of the CA certificate {}",
                ca_key_file.display(),
                ca_file.display()
            )));
        }
        Ok(Self { ca, lifetime })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Signs `csr_der` for `name` with `labels`; returns the PEM and what it says.
    pub fn sign(
        &self,
        csr_der: &[u8],
        name: &str,
        labels: &[(String, String)],
        now: SystemTime,
    ) -> Result<(String, CertInfo), IdentityError> {
        let pem = identity::sign_agent_csr(&self.ca, csr_der, name, labels, self.lifetime, now)?;
        let info = identity::cert_info_pem(&pem)?;
        Ok((pem, info))
    }
}
