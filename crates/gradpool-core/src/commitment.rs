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
//! Ed25519 node key, over the fixed encoding of [`crate::signing`]. The signed commitment is non-repudiable evidence: a
//! provider cannot later deny having produced a checkpoint.

use crate::hash::Sha256Hex;
use crate::id::{JobId, ProviderId, TaskId};
use crate::signing::Encoding;
pub use crate::signing::{ChainHash, PublicKey, Signature, TraceHash};
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// `H_{-1}` for a job: the chain starts from the job id.
pub fn genesis(job_id: &JobId) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(b"gradpool/genesis/v1");
    h.update(job_id.as_str().as_bytes());
    ChainHash(*h.finalize().as_bytes())
}

/// `H_i = BLAKE3(checkpoint_i ‖ H_{i-1})` over checkpoint bytes in memory.
pub fn chain(checkpoint: &[u8], prev: &ChainHash) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(checkpoint);
    h.update(&prev.0);
    ChainHash(*h.finalize().as_bytes())
}

/// `H_i` over a checkpoint file, streamed.
pub fn chain_file(path: &Path, prev: &ChainHash) -> std::io::Result<ChainHash> {
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
    h.update(&prev.0);
    Ok(ChainHash(*h.finalize().as_bytes()))
}

/// BLAKE3 over the little-endian bytes of a loss trace.
pub fn loss_trace_hash(losses: &[f32]) -> TraceHash {
    let mut h = blake3::Hasher::new();
    for l in losses {
        h.update(&l.to_le_bytes());
    }
    TraceHash(*h.finalize().as_bytes())
}

/// What a provider commits to at the end of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    pub loss_trace_blake3: TraceHash,
    pub runtime: String,
    pub class: String,
    /// A parallel job's inner segment: the sha256 of its pseudo-gradient
    /// file ([`crate::delta`]), which is what it sends; the checkpoint
    /// itself goes to the pool only when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_gradient_sha256: Option<Sha256Hex>,
}

impl Commitment {
    /// The exact bytes that are signed ([`crate::signing`]): the tag
    /// `gradpool/commitment/v2`, then job id, segment, start step, end
    /// step, checkpoint sha256, prev, hash, loss trace hash, runtime and
    /// class; with a pseudo-gradient, the tag is `gradpool/commitment/v3`
    /// and its sha256 follows.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let tag = match self.pseudo_gradient_sha256 {
            None => "gradpool/commitment/v2",
            Some(_) => "gradpool/commitment/v3",
        };
        let e = Encoding::new(tag)
            .str(self.job_id.as_str())
            .u32(self.segment)
            .u64(self.start_step)
            .u64(self.end_step)
            .fixed(&self.checkpoint_sha256.to_bytes())
            .fixed(&self.prev.0)
            .fixed(&self.hash.0)
            .fixed(&self.loss_trace_blake3.0)
            .str(&self.runtime)
            .str(&self.class);
        match &self.pseudo_gradient_sha256 {
            None => e.finish(),
            Some(sha) => e.fixed(&sha.to_bytes()).finish(),
        }
    }
}

/// A commitment with the node key that signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedCommitment {
    pub commitment: Commitment,
    pub node_key: PublicKey,
    /// Over [`Commitment::signing_bytes`].
    pub signature: Signature,
}

impl SignedCommitment {
    /// Checks the signature against the embedded key.
    pub fn verify(&self) -> Result<(), CommitmentError> {
        verify(
            &self.node_key,
            &self.commitment.signing_bytes(),
            &self.signature,
        )
    }

    /// The provider whose node key signed this commitment.
    pub fn signer(&self) -> ProviderId {
        ProviderId::from_public_key(&self.node_key.0)
    }
}

/// What a validator reports after replaying an audited segment: the end
/// checkpoint it produced, and, when its reproducibility class differs from
/// the trainer's, its distance to the checkpoint the trainer committed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayReport {
    pub task_id: TaskId,
    pub job_id: JobId,
    pub segment: u32,
    /// sha256 of the end checkpoint the replay produced.
    pub end_checkpoint_sha256: Sha256Hex,
    pub loss_trace_blake3: TraceHash,
    /// The validator's reproducibility class.
    pub class: String,
    /// The largest relative L2 distance over the tensors between the
    /// replay's end checkpoint and the claimed one; `None` inside one class,
    /// where the hashes are compared exactly. Checkpoints that cannot be
    /// compared (another step, other tensors) report `f64::MAX`.
    #[serde(default, deserialize_with = "crate::finite::option_f64")]
    pub distance: Option<f64>,
    /// How long the replay trained, in milliseconds.
    pub compute_ms: u64,
    /// A parallel job's inner segment: the sha256 of the pseudo-gradient
    /// file the replay wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_gradient_sha256: Option<Sha256Hex>,
}

impl ReplayReport {
    /// Checks that the numbers are possible: a distance is ≥ 0.
    pub fn check(&self) -> Result<(), String> {
        match self.distance {
            Some(d) => crate::finite::check_range("distance", d, 0.0, f64::MAX),
            None => Ok(()),
        }
    }

    /// The exact bytes that are signed ([`crate::signing`]): the tag
    /// `gradpool/replay/v2`, then task id, job id, segment, end checkpoint
    /// sha256, loss trace hash, class, distance (an option of f64) and
    /// compute time; with a pseudo-gradient, the tag is
    /// `gradpool/replay/v3` and its sha256 follows.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let tag = match self.pseudo_gradient_sha256 {
            None => "gradpool/replay/v2",
            Some(_) => "gradpool/replay/v3",
        };
        let e = Encoding::new(tag)
            .str(self.task_id.as_str())
            .str(self.job_id.as_str())
            .u32(self.segment)
            .fixed(&self.end_checkpoint_sha256.to_bytes())
            .fixed(&self.loss_trace_blake3.0)
            .str(&self.class)
            .option_f64(self.distance)
            .u64(self.compute_ms);
        match &self.pseudo_gradient_sha256 {
            None => e.finish(),
            Some(sha) => e.fixed(&sha.to_bytes()).finish(),
        }
    }
}

/// A replay report with the validator's node key and signature: the
/// evidence a verdict rests on, next to the trainer's [`SignedCommitment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedReplay {
    pub report: ReplayReport,
    pub node_key: PublicKey,
    /// Over [`ReplayReport::signing_bytes`].
    pub signature: Signature,
}

impl SignedReplay {
    /// Checks the signature against the embedded key.
    pub fn verify(&self) -> Result<(), CommitmentError> {
        verify(
            &self.node_key,
            &self.report.signing_bytes(),
            &self.signature,
        )
    }

    /// The validator whose node key signed the report.
    pub fn signer(&self) -> ProviderId {
        ProviderId::from_public_key(&self.node_key.0)
    }
}

/// One inner segment that entered a parallel job's outer step: its worker
/// slot, the checkpoint it committed, that commitment's hash and the
/// pseudo-gradient it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OuterInput {
    pub worker: u32,
    pub checkpoint_sha256: Sha256Hex,
    pub commitment: ChainHash,
    pub pseudo_gradient_sha256: Sha256Hex,
}

/// The chain hash of a parallel job's next global checkpoint:
///
/// ```text
/// G_{r+1} = BLAKE3("gradpool/outer/v1" ‖ global_{r+1} ‖ G_r ‖ (w ‖ H_w) for each input in worker order)
/// ```
///
/// with `w` a little-endian u32 and `H_w` the hash of worker `w`'s inner
/// commitment, which itself chains from `G_r`. The set of workers that
/// entered the step, and exactly which segments, is bound into the chain.
pub fn outer_chain(global: &[u8], prev: &ChainHash, inputs: &[OuterInput]) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(b"gradpool/outer/v1");
    h.update(global);
    h.update(&prev.0);
    for i in inputs {
        h.update(&i.worker.to_le_bytes());
        h.update(&i.commitment.0);
    }
    ChainHash(*h.finalize().as_bytes())
}

/// What the provider that computed a parallel job's outer step commits
/// to: round `round`'s inner segments (`inputs`) and global checkpoint
/// give the global checkpoint `global_sha256` at `step`, chained as
/// [`outer_chain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OuterCommitment {
    pub job_id: JobId,
    /// The round whose workers entered the step; the new global
    /// checkpoint starts round `round + 1`.
    pub round: u64,
    /// The new global checkpoint's step.
    pub step: u64,
    pub inputs: Vec<OuterInput>,
    pub global_sha256: Sha256Hex,
    /// `G_r`: the round's global commitment (the genesis hash in round 0).
    pub prev: ChainHash,
    /// `G_{r+1}`.
    pub hash: ChainHash,
}

impl OuterCommitment {
    /// The exact bytes that are signed ([`crate::signing`]): the tag
    /// `gradpool/outer-commitment/v2`, then job id, round, step, the number
    /// of inputs and each input's worker, checkpoint sha256, commitment
    /// hash and pseudo-gradient sha256, the global checkpoint's sha256,
    /// prev and hash.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let count = u32::try_from(self.inputs.len()).unwrap_or(u32::MAX);
        let mut e = Encoding::new("gradpool/outer-commitment/v2")
            .str(self.job_id.as_str())
            .u64(self.round)
            .u64(self.step)
            .u32(count);
        for i in &self.inputs {
            e = e
                .u32(i.worker)
                .fixed(&i.checkpoint_sha256.to_bytes())
                .fixed(&i.commitment.0)
                .fixed(&i.pseudo_gradient_sha256.to_bytes());
        }
        e.fixed(&self.global_sha256.to_bytes())
            .fixed(&self.prev.0)
            .fixed(&self.hash.0)
            .finish()
    }
}

/// An outer commitment with the node key that signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedOuterCommitment {
    pub commitment: OuterCommitment,
    pub node_key: PublicKey,
    /// Over [`OuterCommitment::signing_bytes`].
    pub signature: Signature,
}

impl SignedOuterCommitment {
    /// Checks the signature against the embedded key.
    pub fn verify(&self) -> Result<(), CommitmentError> {
        verify(
            &self.node_key,
            &self.commitment.signing_bytes(),
            &self.signature,
        )
    }

    /// The provider whose node key signed this commitment.
    pub fn signer(&self) -> ProviderId {
        ProviderId::from_public_key(&self.node_key.0)
    }
}

fn verify(key: &PublicKey, message: &[u8], signature: &Signature) -> Result<(), CommitmentError> {
    key.verifying_key().map_err(|_| CommitmentError::BadKey)?;
    if key.verifies(message, signature) {
        Ok(())
    } else {
        Err(CommitmentError::BadSignature)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitmentError {
    #[error("malformed public key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("cannot read node key or checkpoint: {0}")]
    Io(#[from] std::io::Error),
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
                let seed: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(CommitmentError::BadKey)?;
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

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    pub fn provider_id(&self) -> ProviderId {
        ProviderId::from_public_key(&self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.key.sign(message).to_bytes())
    }

    pub fn sign_replay(&self, report: ReplayReport) -> SignedReplay {
        let signature = self.sign(&report.signing_bytes());
        SignedReplay {
            report,
            node_key: self.public_key(),
            signature,
        }
    }

    pub fn sign_outer(&self, commitment: OuterCommitment) -> SignedOuterCommitment {
        let signature = self.sign(&commitment.signing_bytes());
        SignedOuterCommitment {
            commitment,
            node_key: self.public_key(),
            signature,
        }
    }

    pub fn sign_commitment(&self, commitment: Commitment) -> SignedCommitment {
        let signature = self.sign(&commitment.signing_bytes());
        SignedCommitment {
            commitment,
            node_key: self.public_key(),
            signature,
        }
    }
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The message a provider signs to prove it holds its node key when it
/// registers: a domain tag, the key, a timestamp (seconds since the epoch)
/// and the single-use nonce the pool issued
/// ([`crate::wire::RegistrationChallenge`]), so a captured registration
/// cannot be replayed.
pub fn registration_message(key: &PublicKey, unix_time: i64, nonce: &str) -> Vec<u8> {
    format!("gradpool/register/v2\n{key}\n{unix_time}\n{nonce}").into_bytes()
}

/// The bytes a node key signs to prove itself for `purpose` (`earnings`,
/// `stake`) outside a session: like [`registration_message`], but a
/// signature for one purpose is worthless for another.
pub fn signed_nonce_message(
    purpose: &str,
    key: &PublicKey,
    unix_time: i64,
    nonce: &str,
) -> Vec<u8> {
    format!("gradpool/{purpose}/v1\n{key}\n{unix_time}\n{nonce}").into_bytes()
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
            hash: chain(ckpt, &prev),
            prev,
            loss_trace_blake3: loss_trace_hash(&[4.2, 4.1]),
            runtime: crate::RUNTIME_VERSION.into(),
            class: "cpu".into(),
            pseudo_gradient_sha256: None,
        })
    }

    #[test]
    fn signed_commitment_verifies_and_names_its_signer() {
        let key = NodeKey::generate();
        let signed = sample(&key);
        signed.verify().unwrap();
        assert_eq!(signed.signer(), key.provider_id());
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
        signed.node_key = NodeKey::generate().public_key();
        assert!(signed.verify().is_err());
    }

    #[test]
    fn chain_depends_on_content_and_history() {
        let g = genesis(&JobId::from("job_1"));
        let a = chain(b"x", &g);
        assert_ne!(a, chain(b"y", &g));
        assert_ne!(a, chain(b"x", &genesis(&JobId::from("job_2"))));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(chain_file(&p, &g).unwrap(), a);
    }

    /// The signed bytes are the documented encoding, field by field: a
    /// change of any field changes them, and they do not depend on JSON.
    #[test]
    fn the_signed_bytes_are_the_fixed_encoding() {
        let key = NodeKey::generate();
        let c = sample(&key).commitment;
        let bytes = c.signing_bytes();
        assert!(bytes.starts_with(b"gradpool/commitment/v2\0"));
        // tag, job id (4 + 5), segment, two steps, four 32-byte hashes,
        // runtime and class.
        let want = 23 + 9 + 4 + 16 + 4 * 32 + (4 + c.runtime.len()) + (4 + 3);
        assert_eq!(bytes.len(), want);
        let mut other = c.clone();
        other.class = "cpy".into();
        assert_ne!(other.signing_bytes(), bytes);
        // A parallel job's segment signs its pseudo-gradient too, under
        // another tag.
        let mut worker = c.clone();
        worker.pseudo_gradient_sha256 = Some(Sha256Hex::of(b"delta"));
        let signed = worker.signing_bytes();
        assert!(signed.starts_with(b"gradpool/commitment/v3\0"));
        assert_eq!(signed.len(), want + 32);
        worker.pseudo_gradient_sha256 = Some(Sha256Hex::of(b"other"));
        assert_ne!(worker.signing_bytes(), signed);
        // A replay's distance is signed by its bits: 0.1 and 0.1000000001
        // differ even where JSON might print them alike.
        let report = |distance| ReplayReport {
            task_id: TaskId::from("task_1"),
            job_id: JobId::from("job_1"),
            segment: 0,
            end_checkpoint_sha256: Sha256Hex::of(b"x"),
            loss_trace_blake3: loss_trace_hash(&[]),
            class: "cpu".into(),
            distance,
            compute_ms: 5,
            pseudo_gradient_sha256: None,
        };
        assert_ne!(
            report(Some(0.1)).signing_bytes(),
            report(Some(0.1 + f64::EPSILON)).signing_bytes()
        );
        assert_ne!(
            report(None).signing_bytes(),
            report(Some(0.0)).signing_bytes()
        );
        let signed = key.sign_replay(report(Some(0.1)));
        signed.verify().unwrap();
        let mut tampered = signed.clone();
        tampered.report.distance = Some(0.01);
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn node_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let a = NodeKey::load_or_create(&p).unwrap();
        let b = NodeKey::load_or_create(&p).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }
}
