//! The isolated tier's host compliance report: what a provider started
//! with `tier = "isolated"` checks on its own machine and signs with its
//! node key, and the place of hardware attestation in it.
//!
//! The report is evidence for the pool's operator, who certifies a
//! provider after reviewing it; a failing report loses the tier. Each
//! check says what it looked at (`detail`), so a reviewer sees more than
//! a yes or no. A check that does not apply (no GPU: no GPU confidential
//! computing mode) passes and says so.
//!
//! **Attestation.** TEEs (AMD SEV-SNP, Intel TDX, NVIDIA H100/H200
//! confidential computing) produce evidence a verifier checks against the
//! vendor's roots. A report carries such evidence ([`Attestation`]) when
//! the host has it, and an [`AttestationVerifier`] judges it. None of
//! these machines has such hardware: [`NoVerifier`] refuses every kind,
//! saying so, and nothing is certified on attestation alone.

use crate::signing::{Encoding, PublicKey, Signature};
use serde::{Deserialize, Serialize};

/// One host check of the isolated tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    /// The agent's data directory lies on a dm-crypt volume.
    EncryptedDataDir,
    /// No swap, or only swap on encrypted volumes.
    SwapOffOrEncrypted,
    /// No listening sockets but the agent's own.
    NoForeignListeners,
    /// No other user logged in.
    NoOtherUsers,
    /// Kernel lockdown on (integrity or confidentiality).
    KernelLockdown,
    /// UEFI Secure Boot on.
    SecureBoot,
    /// An IOMMU is active.
    Iommu,
    /// The GPU's confidential-computing mode on, where it has one.
    GpuConfidentialComputing,
}

impl CheckName {
    /// Every check, in the order a report lists them.
    pub const ALL: [CheckName; 8] = [
        CheckName::EncryptedDataDir,
        CheckName::SwapOffOrEncrypted,
        CheckName::NoForeignListeners,
        CheckName::NoOtherUsers,
        CheckName::KernelLockdown,
        CheckName::SecureBoot,
        CheckName::Iommu,
        CheckName::GpuConfidentialComputing,
    ];

    /// Its name in reports and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::EncryptedDataDir => "encrypted_data_dir",
            CheckName::SwapOffOrEncrypted => "swap_off_or_encrypted",
            CheckName::NoForeignListeners => "no_foreign_listeners",
            CheckName::NoOtherUsers => "no_other_users",
            CheckName::KernelLockdown => "kernel_lockdown",
            CheckName::SecureBoot => "secure_boot",
            CheckName::Iommu => "iommu",
            CheckName::GpuConfidentialComputing => "gpu_confidential_computing",
        }
    }
}

/// One check's outcome and what it looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    pub name: CheckName,
    pub passed: bool,
    pub detail: String,
}

/// The kinds of hardware attestation a report has a place for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttestationKind {
    SevSnp,
    Tdx,
    NvidiaCc,
}

impl AttestationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationKind::SevSnp => "sev_snp",
            AttestationKind::Tdx => "tdx",
            AttestationKind::NvidiaCc => "nvidia_cc",
        }
    }
}

/// A TEE's attestation evidence, as the host produced it (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attestation {
    pub kind: AttestationKind,
    pub evidence: String,
}

/// Judges attestation evidence against a report's digest (the nonce the
/// evidence must bind).
pub trait AttestationVerifier {
    fn verify(&self, attestation: &Attestation, report_digest: &[u8; 32]) -> Result<(), String>;
}

/// The verifier of a pool without TEE support: every kind refused, with
/// the reason.
pub struct NoVerifier;

impl AttestationVerifier for NoVerifier {
    fn verify(&self, attestation: &Attestation, _: &[u8; 32]) -> Result<(), String> {
        Err(format!(
            "{} attestation cannot be verified here: no verifier for it is built in (it waits for hardware to test against)",
            attestation.kind.as_str()
        ))
    }
}

/// The most checks and the longest detail a report may carry.
const MAX_DETAIL: usize = 1024;

/// A host's compliance report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComplianceReport {
    /// When the checks ran, seconds since the epoch.
    pub time: i64,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
}

impl ComplianceReport {
    /// Whether every check passed, each of them present once.
    pub fn passed(&self) -> bool {
        CheckName::ALL.iter().all(|name| {
            let mut of = self.checks.iter().filter(|c| c.name == *name);
            matches!((of.next(), of.next()), (Some(c), None) if c.passed)
        })
    }

    /// The checks that failed or are missing, by name.
    pub fn failures(&self) -> Vec<&'static str> {
        CheckName::ALL
            .iter()
            .filter(|name| !self.checks.iter().any(|c| c.name == **name && c.passed))
            .map(|n| n.as_str())
            .collect()
    }

    /// Whether its size is sane: every check at most once, details short.
    pub fn check(&self) -> Result<(), String> {
        if self.checks.len() > CheckName::ALL.len() {
            return Err("compliance: more checks than there are".into());
        }
        for (i, c) in self.checks.iter().enumerate() {
            if self.checks[..i].iter().any(|o| o.name == c.name) {
                return Err(format!("compliance: {} twice", c.name.as_str()));
            }
            if c.detail.len() > MAX_DETAIL {
                return Err(format!(
                    "compliance: {}'s detail is too long",
                    c.name.as_str()
                ));
            }
        }
        if self
            .attestation
            .as_ref()
            .is_some_and(|a| a.evidence.len() > 64 * 1024)
        {
            return Err("compliance: attestation evidence over 64 KiB".into());
        }
        Ok(())
    }

    /// The exact bytes the node key signs: the tag
    /// `gradpool/compliance/v1`, the time, the number of checks, each
    /// check's name, outcome and detail, then the attestation (kind and
    /// evidence, or nothing).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut e = Encoding::new("gradpool/compliance/v1")
            .u64(u64::try_from(self.time).unwrap_or(0))
            .u32(u32::try_from(self.checks.len()).unwrap_or(u32::MAX));
        for c in &self.checks {
            e = e
                .str(c.name.as_str())
                .u32(u32::from(c.passed))
                .str(&c.detail);
        }
        match &self.attestation {
            Some(a) => e.u32(1).str(a.kind.as_str()).str(&a.evidence).finish(),
            None => e.u32(0).finish(),
        }
    }

    /// Signs it with `node`.
    pub fn sign(self, node: &crate::commitment::NodeKey) -> SignedCompliance {
        SignedCompliance {
            signature: node.sign(&self.signing_bytes()),
            report: self,
        }
    }
}

/// A compliance report signed by the provider's node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedCompliance {
    pub report: ComplianceReport,
    pub signature: Signature,
}

impl SignedCompliance {
    /// Whether `key` signed it.
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        key.verifies(&self.report.signing_bytes(), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(passed: bool) -> ComplianceReport {
        ComplianceReport {
            time: 1_700_000_000,
            checks: CheckName::ALL
                .iter()
                .map(|n| Check {
                    name: *n,
                    passed,
                    detail: "looked".into(),
                })
                .collect(),
            attestation: None,
        }
    }

    #[test]
    fn a_report_passes_only_with_every_check_passed_once() {
        assert!(all(true).passed());
        assert!(!all(false).passed());
        let mut one_off = all(true);
        one_off.checks[0].passed = false;
        assert!(!one_off.passed());
        assert_eq!(one_off.failures(), ["encrypted_data_dir"]);
        let mut missing = all(true);
        missing.checks.pop();
        assert!(!missing.passed());
        let mut twice = all(true);
        twice.checks.push(twice.checks[0].clone());
        assert!(twice.check().is_err());
        assert!(all(true).check().is_ok());
    }

    #[test]
    fn a_signed_report_is_bound_to_its_node_key_and_its_content() {
        let node = crate::commitment::NodeKey::generate();
        let signed = all(true).sign(&node);
        assert!(signed.is_signed_by(&node.public_key()));
        let other = crate::commitment::NodeKey::generate();
        assert!(!signed.is_signed_by(&other.public_key()));
        let mut edited = signed.clone();
        edited.report.checks[2].passed = false;
        assert!(!edited.is_signed_by(&node.public_key()));
        let json = serde_json::to_string(&signed).unwrap();
        assert!(json.contains("\"encrypted_data_dir\""), "{json}");
        let back: SignedCompliance = serde_json::from_str(&json).unwrap();
        assert!(back.is_signed_by(&node.public_key()));
    }

    #[test]
    fn no_attestation_is_verified_without_a_verifier_for_it() {
        let a = Attestation {
            kind: AttestationKind::SevSnp,
            evidence: "00".into(),
        };
        let e = NoVerifier.verify(&a, &[0; 32]).unwrap_err();
        assert!(e.contains("sev_snp") && e.contains("hardware"), "{e}");
    }
}
