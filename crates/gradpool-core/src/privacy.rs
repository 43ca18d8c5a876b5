//! Confidential jobs: the data key, what it seals, and how it reaches the
//! providers a customer accepts.
//!
//! - A job's **data key** ([`DataKey`]): 32 random bytes, made by the
//!   customer's CLI for one job.
//! - **Sealed files** ([`seal`], [`open`]): everything of a confidential
//!   job the pool stores (dataset, job files, image, checkpoints) is
//!   XChaCha20-Poly1305 under the data key, in the STREAM construction
//!   (RustCrypto's `aead::stream`, big-endian 32-bit counter) over chunks
//!   of [`CHUNK`] bytes, the last one flagged. Its layout:
//!
//!   ```text
//!   "gradpool-sealed-v1\n"   19 bytes, the magic
//!   nonce prefix            19 bytes: keyed BLAKE3 of the plaintext
//!   chunk, chunk, …         each its plaintext (CHUNK bytes, the last
//!                           0 to CHUNK) + a 16-byte tag
//!   ```
//!
//!   Sealing is deterministic (a synthetic nonce, as in SIV modes: the
//!   nonce prefix is BLAKE3 of the plaintext under a key derived from the
//!   data key): one key and one plaintext give one sealed file. A replay's
//!   sealed checkpoint is therefore compared with the claimed one by its
//!   digest, as for any job; the pool learns only whether two sealed files
//!   hold the same bytes.
//!
//!   Every chunk's associated data is the header (magic and nonce prefix),
//!   so a file opens only whole, in order, unaltered and untruncated: a
//!   missing last chunk, a swapped chunk or a flipped bit is an error.
//!   Chunks are released as they authenticate: a reader writes the
//!   plaintext where an error discards it (the agent: a file on tmpfs,
//!   removed).
//! - A provider's **encryption key** ([`EncryptionKey`]): an X25519 key the
//!   agent keeps beside its node key. It publishes the public half at
//!   registration, bound to its node key by a signature over
//!   [`encryption_key_message`], so a customer seals only to keys the
//!   provider itself announced, whatever the pool relays.
//! - A **sealed key** ([`SealedKey`]): the data key sealed to one
//!   provider's encryption key (an anonymous sealed box, `crypto_box`'s
//!   `seal`: X25519, XSalsa20-Poly1305, libsodium-compatible), together
//!   with the provider's id and the digest of the job's sealed dataset.
//!   [`SealedKey::open`] refuses one for another provider or another job,
//!   so a sealed key copied from one job into another opens nothing.

use crate::{ProviderId, Sha256Hex};
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, OsRng, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use std::io::{Read, Write};

/// The first bytes of every sealed file.
pub const MAGIC: &[u8; 19] = b"gradpool-sealed-v1\n";

/// Plaintext bytes per chunk of a sealed file.
pub const CHUNK: usize = 64 * 1024;

/// The bytes a sealed chunk adds: Poly1305's tag.
const TAG: usize = 16;

/// The nonce prefix of XChaCha20's STREAM: 24 bytes less the 5 of the
/// counter and last-chunk flag.
const NONCE_PREFIX: usize = 19;

/// The bytes of a sealed file's header.
pub const HEADER: usize = MAGIC.len() + NONCE_PREFIX;

/// The domain tag of what a sealed key holds.
const SEALED_KEY_TAG: &[u8] = b"gradpool-sealed-key-v1";

/// The domain tag of an encryption key's binding to a node key.
const ENCRYPTION_KEY_TAG: &[u8] = b"gradpool-encryption-key-v1";

/// Why a sealed file or key does not open.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("not a sealed file (no gradpool-sealed-v1 header)")]
    NotSealed,
    #[error("the sealed file is truncated or altered (chunk {chunk} does not authenticate)")]
    Tampered { chunk: u64 },
    #[error("the sealed key does not open with this provider's encryption key")]
    NotForThisKey,
    #[error("the sealed key is for {what}, not this one")]
    Misdirected { what: &'static str },
    #[error("the sealed key is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A confidential job's data key.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(…)")
    }
}

impl DataKey {
    /// A fresh key from the operating system's generator.
    pub fn generate() -> DataKey {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        DataKey(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex digits, for a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A key from a key file's 64 hex digits.
    pub fn from_hex(text: &str) -> Option<DataKey> {
        let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(DataKey(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of `src`.
fn fill(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The domain of the key the synthetic nonce is derived with.
const NONCE_KEY_CONTEXT: &str = "gradpool 2026-12 sealed-file nonce v1";

/// The nonce prefix of `src`'s plaintext under `key`: keyed BLAKE3 of all
/// of it, read once.
fn synthetic_nonce(key: &DataKey, src: &mut impl Read) -> std::io::Result<[u8; NONCE_PREFIX]> {
    let nonce_key = blake3::derive_key(NONCE_KEY_CONTEXT, key.as_bytes());
    let mut hasher = blake3::Hasher::new_keyed(&nonce_key);
    std::io::copy(src, &mut hasher)?;
    let mut nonce = [0u8; NONCE_PREFIX];
    nonce.copy_from_slice(&hasher.finalize().as_bytes()[..NONCE_PREFIX]);
    Ok(nonce)
}

/// Seals everything `src` holds under `key` into `dst` (format above),
/// reading it twice (the synthetic nonce, then the chunks); the bytes
/// written.
pub fn seal(
    key: &DataKey,
    src: &mut (impl Read + std::io::Seek),
    dst: &mut impl Write,
) -> Result<u64, PrivacyError> {
    let start = src.stream_position()?;
    let nonce = synthetic_nonce(key, src)?;
    src.seek(std::io::SeekFrom::Start(start))?;
    let mut header = [0u8; HEADER];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()..].copy_from_slice(&nonce);
    dst.write_all(&header)?;
    let mut stream = EncryptorBE32::from_aead(key.cipher(), header[MAGIC.len()..].into());
    let mut written = HEADER as u64;
    // One chunk read ahead: the last one is sealed as the last.
    let mut current = vec![0u8; CHUNK];
    let mut n = fill(src, &mut current)?;
    let mut next = vec![0u8; CHUNK];
    loop {
        let m = if n == CHUNK { fill(src, &mut next)? } else { 0 };
        let payload = Payload {
            msg: &current[..n],
            aad: &header,
        };
        if m == 0 {
            let sealed = stream
                .encrypt_last(payload)
                .map_err(|_| PrivacyError::Malformed("cannot seal".into()))?;
            dst.write_all(&sealed)?;
            return Ok(written + sealed.len() as u64);
        }
        let sealed = stream
            .encrypt_next(payload)
            .map_err(|_| PrivacyError::Malformed("cannot seal".into()))?;
        dst.write_all(&sealed)?;
        written += sealed.len() as u64;
        std::mem::swap(&mut current, &mut next);
        n = m;
    }
}

/// Opens a sealed file from `src` into `dst`: every chunk authenticated,
/// in order, the last one flagged; the plaintext bytes written. On an
/// error, what was written to `dst` must be discarded: the file as a
/// whole did not authenticate.
pub fn open(key: &DataKey, src: &mut impl Read, dst: &mut impl Write) -> Result<u64, PrivacyError> {
    let mut header = [0u8; HEADER];
    if fill(src, &mut header)? < HEADER || &header[..MAGIC.len()] != MAGIC {
        return Err(PrivacyError::NotSealed);
    }
    let mut stream = DecryptorBE32::from_aead(key.cipher(), header[MAGIC.len()..].into());
    let size = CHUNK + TAG;
    let mut current = vec![0u8; size];
    let mut n = fill(src, &mut current)?;
    let mut next = vec![0u8; size];
    let (mut chunk, mut written) = (0u64, 0u64);
    loop {
        let m = if n == size { fill(src, &mut next)? } else { 0 };
        let payload = Payload {
            msg: &current[..n],
            aad: &header,
        };
        if m == 0 {
            let plain = stream
                .decrypt_last(payload)
                .map_err(|_| PrivacyError::Tampered { chunk })?;
            dst.write_all(&plain)?;
            return Ok(written + plain.len() as u64);
        }
        let plain = stream
            .decrypt_next(payload)
            .map_err(|_| PrivacyError::Tampered { chunk })?;
        dst.write_all(&plain)?;
        written += plain.len() as u64;
        std::mem::swap(&mut current, &mut next);
        n = m;
        chunk += 1;
    }
}

/// The size of the sealed file of `plaintext` bytes.
pub fn sealed_size(plaintext: u64) -> u64 {
    let chunks = plaintext.div_ceil(CHUNK as u64).max(1);
    HEADER as u64 + plaintext + chunks * TAG as u64
}

/// The size of the plaintext a sealed file of `sealed` bytes holds;
/// `None` when no plaintext seals to that size (a truncated or padded
/// file).
pub fn plaintext_size(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER as u64)?;
    let chunks = body.div_ceil((CHUNK + TAG) as u64).max(1);
    let plaintext = body.checked_sub(chunks * TAG as u64)?;
    (sealed_size(plaintext) == sealed).then_some(plaintext)
}

/// Seals `bytes` in memory.
pub fn seal_bytes(key: &DataKey, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed_size(bytes.len() as u64) as usize);
    // Writing to a Vec cannot fail, nor can sealing a slice.
    let _ = seal(key, &mut std::io::Cursor::new(bytes), &mut out);
    out
}

/// Opens a sealed file held in memory.
pub fn open_bytes(key: &DataKey, sealed: &[u8]) -> Result<Vec<u8>, PrivacyError> {
    let mut out = Vec::with_capacity(sealed.len());
    open(key, &mut &sealed[..], &mut out)?;
    Ok(out)
}

/// Seals the file `from` into `to`, written whole (through a temporary
/// file beside it) or not at all; the sealed file's sha256.
pub fn seal_file(
    key: &DataKey,
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<Sha256Hex, PrivacyError> {
    let partial = to.with_extension("sealing");
    let result = (|| {
        let mut src = std::io::BufReader::new(std::fs::File::open(from)?);
        let mut dst = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        seal(key, &mut src, &mut dst)?;
        dst.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, to)?;
        Ok(Sha256Hex::of_file(to)?)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Opens the sealed file `from` into `to`: on any error (a truncated or
/// altered file, another key) `to` is not left behind; the plaintext
/// bytes.
pub fn open_file(
    key: &DataKey,
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<u64, PrivacyError> {
    let partial = to.with_extension("opening");
    let result = (|| {
        let mut src = std::io::BufReader::new(std::fs::File::open(from)?);
        let mut dst = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        let n = open(key, &mut src, &mut dst)?;
        dst.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&partial, to)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Whether `bytes` begin as a sealed file does: what the pool checks of a
/// confidential job's blobs, which it cannot open.
pub fn looks_sealed(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER && bytes.starts_with(MAGIC)
}

/// A provider's X25519 encryption key.
pub struct EncryptionKey(crypto_box::SecretKey);

/// The public half of a provider's encryption key, as 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EncryptionPublicKey([u8; 32]);

impl TryFrom<String> for EncryptionPublicKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<EncryptionPublicKey> for String {
    fn from(k: EncryptionPublicKey) -> String {
        k.to_string()
    }
}

impl std::str::FromStr for EncryptionPublicKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s).map_err(|e| format!("an encryption key: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "an encryption key: 32 bytes as 64 hex digits".to_owned())?;
        Ok(EncryptionPublicKey(bytes))
    }
}

impl std::fmt::Display for EncryptionPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl EncryptionKey {
    /// A fresh key from the operating system's generator.
    pub fn generate() -> EncryptionKey {
        EncryptionKey(crypto_box::SecretKey::generate(&mut OsRng))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> EncryptionKey {
        EncryptionKey(crypto_box::SecretKey::from(bytes))
    }

    /// The secret, for the agent's key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> EncryptionPublicKey {
        EncryptionPublicKey(*self.0.public_key().as_bytes())
    }
}

impl EncryptionKey {
    /// Loads the key from `path` (64 hex digits), or creates it there
    /// (mode 0600) if absent, as a node key is.
    pub fn load_or_create(path: &std::path::Path) -> Result<EncryptionKey, PrivacyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        PrivacyError::Malformed(format!(
                            "{}: not an encryption key (64 hex digits)",
                            path.display()
                        ))
                    })?;
                Ok(EncryptionKey::from_bytes(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = EncryptionKey::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("tmp");
                crate::commitment::write_private(&tmp, hex::encode(key.to_bytes()).as_bytes())?;
                std::fs::rename(&tmp, path)?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A provider's encryption key as it announces it at registration, bound
/// to its node key: what a customer's CLI checks before sealing a data
/// key to it, whatever the pool relays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnnouncedKey {
    pub key: EncryptionPublicKey,
    /// The provider's node key (its id is derived from it).
    pub node_key: crate::signing::PublicKey,
    /// The node key's signature over [`encryption_key_message`].
    pub signature: crate::signing::Signature,
}

impl AnnouncedKey {
    /// `node`'s announcement of `key`.
    pub fn announce(node: &crate::commitment::NodeKey, key: &EncryptionKey) -> AnnouncedKey {
        let public = key.public();
        AnnouncedKey {
            signature: node.sign(&encryption_key_message(&public)),
            node_key: node.public_key(),
            key: public,
        }
    }

    /// Whether `provider` announced it: its id is the node key's, and the
    /// node key signed the encryption key.
    pub fn is_from(&self, provider: &ProviderId) -> bool {
        ProviderId::from_public_key(self.node_key.as_bytes()) == *provider
            && self
                .node_key
                .verifies(&encryption_key_message(&self.key), &self.signature)
    }
}

/// What a provider's node key signs to bind its encryption key `key`: the
/// tag `gradpool-encryption-key-v1`, a zero byte, then the key's 32 bytes.
pub fn encryption_key_message(key: &EncryptionPublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENCRYPTION_KEY_TAG.len() + 33);
    m.extend_from_slice(ENCRYPTION_KEY_TAG);
    m.push(0);
    m.extend_from_slice(&key.0);
    m
}

/// A data key sealed to one provider, as the pool stores and relays it:
/// opaque bytes, hex in JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SealedKey(Vec<u8>);

impl TryFrom<String> for SealedKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bytes = hex::decode(&s).map_err(|e| format!("a sealed key: {e}"))?;
        if bytes.len() > 1024 {
            return Err("a sealed key: at most 1024 bytes".into());
        }
        Ok(SealedKey(bytes))
    }
}

impl From<SealedKey> for String {
    fn from(k: SealedKey) -> String {
        hex::encode(k.0)
    }
}

/// What a sealed key holds, in one fixed encoding: the tag, a zero byte,
/// the provider id's length (one byte) and bytes, the sealed dataset's 32
/// digest bytes, and the data key's 32 bytes.
fn sealed_key_message(provider: &ProviderId, data: &Sha256Hex, key: &DataKey) -> Vec<u8> {
    let id = provider.as_str().as_bytes();
    let mut m = Vec::with_capacity(SEALED_KEY_TAG.len() + 2 + id.len() + 64);
    m.extend_from_slice(SEALED_KEY_TAG);
    m.push(0);
    m.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(id);
    m.extend_from_slice(&data.to_bytes());
    m.extend_from_slice(key.as_bytes());
    m
}

impl SealedKey {
    /// Seals `key` to `provider`'s encryption key `to`, for the job whose
    /// sealed dataset has digest `data`.
    pub fn seal(
        key: &DataKey,
        provider: &ProviderId,
        to: &EncryptionPublicKey,
        data: &Sha256Hex,
    ) -> SealedKey {
        let message = sealed_key_message(provider, data, key);
        let public = crypto_box::PublicKey::from(to.0);
        // Sealing a short message to a valid point does not fail.
        SealedKey(public.seal(&mut OsRng, &message).unwrap_or_default())
    }

    /// Opens a sealed key with `provider`'s encryption key `secret`, for
    /// the job whose sealed dataset has digest `data`; refused when it is
    /// not for this key, this provider or this job.
    pub fn open(
        &self,
        secret: &EncryptionKey,
        provider: &ProviderId,
        data: &Sha256Hex,
    ) -> Result<DataKey, PrivacyError> {
        let message = secret
            .0
            .unseal(&self.0)
            .map_err(|_| PrivacyError::NotForThisKey)?;
        let rest = message
            .strip_prefix(SEALED_KEY_TAG)
            .and_then(|r| r.strip_prefix(&[0]))
            .ok_or_else(|| PrivacyError::Malformed("not a gradpool sealed key".into()))?;
        let (&len, rest) = rest
            .split_first()
            .ok_or_else(|| PrivacyError::Malformed("empty".into()))?;
        let len = usize::from(len);
        if rest.len() != len + 64 {
            return Err(PrivacyError::Malformed("wrong length".into()));
        }
        let (id, rest) = rest.split_at(len);
        if id != provider.as_str().as_bytes() {
            return Err(PrivacyError::Misdirected {
                what: "another provider",
            });
        }
        let (digest, key) = rest.split_at(32);
        if digest != data.to_bytes() {
            return Err(PrivacyError::Misdirected {
                what: "another job",
            });
        }
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(key);
        Ok(DataKey(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_sealed_file_opens_to_its_bytes_at_every_size() {
        let key = DataKey::generate();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let plain = bytes(n);
            let sealed = seal_bytes(&key, &plain);
            assert_eq!(sealed.len() as u64, sealed_size(n as u64), "{n}");
            assert_eq!(open_bytes(&key, &sealed).unwrap(), plain, "{n}");
            assert_eq!(sealed, seal_bytes(&key, &plain), "deterministic");
            assert_ne!(sealed, seal_bytes(&DataKey::generate(), &plain));
        }
        let (a, b) = (seal_bytes(&key, b"one"), seal_bytes(&key, b"two"));
        assert_ne!(a[..HEADER], b[..HEADER], "another plaintext, another nonce");
    }

    #[test]
    fn a_truncated_altered_or_foreign_file_does_not_open() {
        let key = DataKey::generate();
        let plain = bytes(2 * CHUNK + 100);
        let sealed = seal_bytes(&key, &plain);
        // Cut at a chunk boundary: the chunk before was not the last.
        let cut = HEADER + CHUNK + TAG;
        assert!(matches!(
            open_bytes(&key, &sealed[..cut]),
            Err(PrivacyError::Tampered { chunk: 0 })
        ));
        assert!(open_bytes(&key, &sealed[..sealed.len() - 1]).is_err());
        let mut flipped = sealed.clone();
        flipped[HEADER + CHUNK + TAG + 3] ^= 1;
        assert!(matches!(
            open_bytes(&key, &flipped),
            Err(PrivacyError::Tampered { chunk: 1 })
        ));
        // Two chunks swapped.
        let mut swapped = sealed[..HEADER].to_vec();
        swapped.extend_from_slice(&sealed[HEADER + CHUNK + TAG..HEADER + 2 * (CHUNK + TAG)]);
        swapped.extend_from_slice(&sealed[HEADER..HEADER + CHUNK + TAG]);
        swapped.extend_from_slice(&sealed[HEADER + 2 * (CHUNK + TAG)..]);
        assert!(open_bytes(&key, &swapped).is_err());
        // Another header (nonce) over the same chunks.
        let mut renonced = sealed.clone();
        renonced[MAGIC.len()] ^= 1;
        assert!(open_bytes(&key, &renonced).is_err());
        assert!(open_bytes(&DataKey::generate(), &sealed).is_err());
        assert!(matches!(
            open_bytes(&key, &plain),
            Err(PrivacyError::NotSealed)
        ));
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_provider_and_job() {
        let key = DataKey::generate();
        let provider = ProviderId::from_public_key(&[1; 32]);
        let other = ProviderId::from_public_key(&[2; 32]);
        let secret = EncryptionKey::generate();
        let data = Sha256Hex::of(b"sealed dataset");
        let sealed = SealedKey::seal(&key, &provider, &secret.public(), &data);
        assert_eq!(sealed.open(&secret, &provider, &data).unwrap(), key);
        assert!(matches!(
            sealed.open(&EncryptionKey::generate(), &provider, &data),
            Err(PrivacyError::NotForThisKey)
        ));
        assert!(matches!(
            sealed.open(&secret, &other, &data),
            Err(PrivacyError::Misdirected {
                what: "another provider"
            })
        ));
        assert!(matches!(
            sealed.open(&secret, &provider, &Sha256Hex::of(b"another job")),
            Err(PrivacyError::Misdirected {
                what: "another job"
            })
        ));
        let json = serde_json::to_string(&sealed).unwrap();
        let back: SealedKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sealed);
        let mut tampered = sealed.0.clone();
        tampered[40] ^= 1;
        assert!(SealedKey(tampered).open(&secret, &provider, &data).is_err());
        let public: EncryptionPublicKey = secret.public().to_string().parse().unwrap();
        assert_eq!(public, secret.public());
        let restored = EncryptionKey::from_bytes(secret.to_bytes());
        assert_eq!(restored.public(), secret.public());
    }

    #[test]
    fn an_announced_key_is_bound_to_its_node_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encryption.key");
        let key = EncryptionKey::load_or_create(&path).unwrap();
        let again = EncryptionKey::load_or_create(&path).unwrap();
        assert_eq!(key.public(), again.public(), "kept across restarts");
        let node = crate::commitment::NodeKey::generate();
        let announced = AnnouncedKey::announce(&node, &key);
        assert!(announced.is_from(&node.provider_id()));
        let other = crate::commitment::NodeKey::generate();
        assert!(!announced.is_from(&other.provider_id()));
        // The pool swapping in a key of its own breaks the signature.
        let swapped = AnnouncedKey {
            key: EncryptionKey::generate().public(),
            ..announced.clone()
        };
        assert!(!swapped.is_from(&node.provider_id()));
        std::fs::write(&path, "not a key").unwrap();
        assert!(EncryptionKey::load_or_create(&path).is_err());
    }

    #[test]
    fn a_sealed_file_on_disk_opens_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, bytes(CHUNK * 2 + 9)).unwrap();
        let sealed = dir.path().join("sealed");
        let sha = seal_file(&key, &plain, &sealed).unwrap();
        assert_eq!(Sha256Hex::of_file(&sealed).unwrap(), sha);
        assert!(looks_sealed(&std::fs::read(&sealed).unwrap()));
        let opened = dir.path().join("opened");
        open_file(&key, &sealed, &opened).unwrap();
        assert_eq!(
            std::fs::read(&opened).unwrap(),
            std::fs::read(&plain).unwrap()
        );
        let cut = dir.path().join("cut");
        let bytes = std::fs::read(&sealed).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let out = dir.path().join("out");
        assert!(open_file(&key, &cut, &out).is_err());
        assert!(!out.exists() && !out.with_extension("opening").exists());
    }

    #[test]
    fn a_sealed_size_tells_the_plaintext_size_and_nothing_else_fits() {
        let key = DataKey::generate();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let sealed = seal_bytes(&key, &vec![5u8; n]);
            assert_eq!(sealed.len() as u64, sealed_size(n as u64), "{n}");
            assert_eq!(plaintext_size(sealed.len() as u64), Some(n as u64), "{n}");
        }
        // A full chunk's tag without its chunk, or a header alone, is no
        // sealed file's size.
        let two_chunks = sealed_size(2 * CHUNK as u64);
        assert_eq!(plaintext_size(two_chunks + 1), None);
        assert_eq!(plaintext_size(two_chunks + TAG as u64), None);
        assert_eq!(
            plaintext_size(two_chunks + TAG as u64 + 1),
            Some(2 * CHUNK as u64 + 1)
        );
        assert_eq!(plaintext_size(HEADER as u64), None);
        assert_eq!(plaintext_size(3), None);
    }
}

#[cfg(feature = "openapi")]
crate::openapi::hex_schema!(EncryptionPublicKey, Some(32usize), "an X25519 public key");

#[cfg(feature = "openapi")]
crate::openapi::hex_schema!(
    SealedKey,
    None::<usize>,
    "a data key sealed to one provider"
);
