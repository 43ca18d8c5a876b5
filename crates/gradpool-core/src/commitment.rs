//! The commitment chain over a job's checkpoints.
//!
//! After each segment a provider commits to the checkpoint it produced:
//!
//! ```text
//! H_i = BLAKE3(checkpoint_i ‖ H_{i-1}),   H_{-1} = BLAKE3("gradpool/genesis/v1" ‖ job_id)
//! ```
//!
//! and signs a [`Commitment`] (segment, steps, checkpoint digest, chain
//! hashes, loss trace digest, runtime and reproducibility class) with its
//! Ed25519 node key. The signed commitment is non-repudiable evidence: a
//! provider cannot later deny having produced a checkpoint.

use crate::hash::Sha256Hex;
use crate::id::{JobId, ProviderId, TaskId};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// A 32-byte BLAKE3 chain hash, hex-encoded on the wire.
pub type ChainHash = String;

/// `H_{-1}` for a job: the chain starts from the job id.
pub fn genesis(job_id: &JobId) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(b"gradpool/genesis/v1");
    h.update(job_id.as_str().as_bytes());
    h.finalize().to_hex().to_string()
}

/// `H_i = BLAKE3(checkpoint_i ‖ H_{i-1})` over checkpoint bytes in memory.
pub fn chain(checkpoint: &[u8], prev: &str) -> Result<ChainHash, CommitmentError> {
    let prev = decode32(prev)?;
    let mut h = blake3::Hasher::new();
    h.update(checkpoint);
    h.update(&prev);
    Ok(h.finalize().to_hex().to_string())
}

/// `H_i` over a checkpoint file, streamed.
pub fn chain_file(path: &Path, prev: &str) -> Result<ChainHash, CommitmentError> {
    let prev = decode32(prev)?;
    let mut h = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.update(&prev);
    Ok(h.finalize().to_hex().to_string())
}

/// BLAKE3 over the little-endian bytes of a loss trace.
pub fn loss_trace_hash(losses: &[f32]) -> String {
    let mut h = blake3::Hasher::new();
    for l in losses {
        h.update(&l.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// What a provider commits to at the end of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commitment {
    pub job_id: JobId,
    pub segment: u32,
    pub start_step: u64,
    pub end_step: u64,
    pub checkpoint_sha256: Sha256Hex,
    /// `H_{i-1}`: the previous accepted commitment (or the genesis hash).
    pub prev: ChainHash,
    /// `H_i`.
    pub hash: ChainHash,
    pub loss_trace_blake3: String,
    pub runtime: String,
    pub class: String,
}

impl Commitment {
    /// The exact bytes that are signed: a domain tag and the JSON of the
    /// commitment (fields in declaration order, so the encoding is stable).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = b"gradpool/commitment/v1\n".to_vec();
        // Serialising a struct of strings and integers cannot fail.
        out.extend(serde_json::to_vec(self).expect("commitment serialises"));
        out
    }
}

/// A commitment with the node key that signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedCommitment {
    pub commitment: Commitment,
    /// Hex Ed25519 public key.
    pub node_key: String,
    /// Hex Ed25519 signature over [`Commitment::signing_bytes`].
    pub signature: String,
}

impl SignedCommitment {
    /// Checks the signature against the embedded key.
    pub fn verify(&self) -> Result<(), CommitmentError> {
        let key = verifying_key(&self.node_key)?;
        let sig = decode_signature(&self.signature)?;
        key.verify(&self.commitment.signing_bytes(), &sig)
            .map_err(|_| CommitmentError::BadSignature)
    }

    /// The provider whose node key signed this commitment.
    pub fn signer(&self) -> Result<ProviderId, CommitmentError> {
        Ok(ProviderId::from_public_key(&decode32(&self.node_key)?))
    }
}

/// What a validator reports after replaying an audited segment: the end
/// checkpoint it produced, and, when its reproducibility class differs from
/// the trainer's, its distance to the checkpoint the trainer committed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    pub task_id: TaskId,
    pub job_id: JobId,
    pub segment: u32,
    /// sha256 of the end checkpoint the replay produced.
    pub end_checkpoint_sha256: Sha256Hex,
    pub loss_trace_blake3: String,
    /// The validator's reproducibility class.
    pub class: String,
    /// The largest relative L2 distance over the tensors between the
    /// replay's end checkpoint and the claimed one; `None` inside one class,
    /// where the hashes are compared exactly. Checkpoints that cannot be
    /// compared (another step, other tensors) report `f64::MAX`.
    pub distance: Option<f64>,
    /// How long the replay trained, in milliseconds.
    pub compute_ms: u64,
}

impl ReplayReport {
    /// The exact bytes that are signed.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = b"gradpool/replay/v1\n".to_vec();
        // Strings, integers and a finite float: serialising cannot fail.
        out.extend(serde_json::to_vec(self).expect("replay report serialises"));
        out
    }
}

/// A replay report with the validator's node key and signature: the
/// evidence a verdict rests on, next to the trainer's [`SignedCommitment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedReplay {
    pub report: ReplayReport,
    /// Hex Ed25519 public key.
    pub node_key: String,
    /// Hex Ed25519 signature over [`ReplayReport::signing_bytes`].
    pub signature: String,
}

impl SignedReplay {
    /// Checks the signature against the embedded key.
    pub fn verify(&self) -> Result<(), CommitmentError> {
        let key = verifying_key(&self.node_key)?;
        let sig = decode_signature(&self.signature)?;
        key.verify(&self.report.signing_bytes(), &sig)
            .map_err(|_| CommitmentError::BadSignature)
    }

    /// The validator whose node key signed the report.
    pub fn signer(&self) -> Result<ProviderId, CommitmentError> {
        Ok(ProviderId::from_public_key(&decode32(&self.node_key)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitmentError {
    #[error("expected 32 hex-encoded bytes")]
    BadHash,
    #[error("malformed public key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("cannot read node key or checkpoint: {0}")]
    Io(#[from] std::io::Error),
}

fn decode32(s: &str) -> Result<[u8; 32], CommitmentError> {
    let bytes = hex::decode(s).map_err(|_| CommitmentError::BadHash)?;
    bytes.try_into().map_err(|_| CommitmentError::BadHash)
}

pub fn verifying_key(hex_key: &str) -> Result<VerifyingKey, CommitmentError> {
    let bytes = decode32(hex_key).map_err(|_| CommitmentError::BadKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| CommitmentError::BadKey)
}

pub fn decode_signature(hex_sig: &str) -> Result<Signature, CommitmentError> {
    let bytes = hex::decode(hex_sig).map_err(|_| CommitmentError::BadSignature)?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| CommitmentError::BadSignature)?;
    Ok(Signature::from_bytes(&bytes))
}

/// A provider's Ed25519 node key.
pub struct NodeKey {
    key: SigningKey,
}

impl NodeKey {
    pub fn generate() -> NodeKey {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("operating system random source failed");
        NodeKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key from `path`, or creates it there (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, CommitmentError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let seed = decode32(text.trim()).map_err(|_| CommitmentError::BadKey)?;
                Ok(NodeKey {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("tmp");
                write_private(&tmp, hex::encode(key.key.to_bytes()).as_bytes())?;
                std::fs::rename(&tmp, path)?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    pub fn provider_id(&self) -> ProviderId {
        ProviderId::from_public_key(&self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }

    pub fn sign_replay(&self, report: ReplayReport) -> SignedReplay {
        let signature = self.sign(&report.signing_bytes());
        SignedReplay {
            report,
            node_key: self.public_hex(),
            signature,
        }
    }

    pub fn sign_commitment(&self, commitment: Commitment) -> SignedCommitment {
        let signature = self.sign(&commitment.signing_bytes());
        SignedCommitment {
            commitment,
            node_key: self.public_hex(),
            signature,
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The message a provider signs to prove it holds its node key when it
/// registers: a domain tag, the key, a timestamp (seconds since the epoch)
/// and the single-use nonce the pool issued
/// ([`crate::wire::RegistrationChallenge`]), so a captured registration
/// cannot be replayed.
pub fn registration_message(public_hex: &str, unix_time: i64, nonce: &str) -> Vec<u8> {
    format!("gradpool/register/v2\n{public_hex}\n{unix_time}\n{nonce}").into_bytes()
}

/// The bytes a node key signs to prove itself for `purpose` (`earnings`,
/// `stake`) outside a session: like [`registration_message`], but a
/// signature for one purpose is worthless for another.
pub fn node_proof_message(purpose: &str, public_hex: &str, unix_time: i64, nonce: &str) -> Vec<u8> {
    format!("gradpool/{purpose}/v1\n{public_hex}\n{unix_time}\n{nonce}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &NodeKey) -> SignedCommitment {
        let job = JobId::from("job_1");
        let prev = genesis(&job);
        let ckpt = b"checkpoint bytes";
        key.sign_commitment(Commitment {
            job_id: job,
            segment: 0,
            start_step: 0,
            end_step: 10,
            checkpoint_sha256: Sha256Hex::of(ckpt),
            hash: chain(ckpt, &prev).unwrap(),
            prev,
            loss_trace_blake3: loss_trace_hash(&[4.2, 4.1]),
            runtime: crate::RUNTIME_VERSION.into(),
            class: "cpu".into(),
        })
    }

    #[test]
    fn signed_commitment_verifies_and_names_its_signer() {
        let key = NodeKey::generate();
        let signed = sample(&key);
        signed.verify().unwrap();
        assert_eq!(signed.signer().unwrap(), key.provider_id());
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = NodeKey::generate();
        let mut signed = sample(&key);
        signed.commitment.end_step = 11;
        assert!(matches!(
            signed.verify(),
            Err(CommitmentError::BadSignature)
        ));
        let mut signed = sample(&key);
        signed.node_key = NodeKey::generate().public_hex();
        assert!(signed.verify().is_err());
    }

    #[test]
    fn chain_depends_on_content_and_history() {
        let g = genesis(&JobId::from("job_1"));
        let a = chain(b"x", &g).unwrap();
        assert_ne!(a, chain(b"y", &g).unwrap());
        assert_ne!(a, chain(b"x", &genesis(&JobId::from("job_2"))).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(chain_file(&p, &g).unwrap(), a);
    }

    #[test]
    fn node_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let a = NodeKey::load_or_create(&p).unwrap();
        let b = NodeKey::load_or_create(&p).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
    }
}
