//! Confidential jobs on the customer's side: the key holders the spec
//! allows, chosen among the providers the pool lists and each announced
//! key checked against the provider's own node key (the pool relays keys,
//! it cannot swap them); the dataset sealed under a fresh data key; the
//! key sealed to each holder; and the key kept here ([`KeyStore`]) to open
//! what the job gives back.

use anyhow::{bail, Context};
use gradpool_client::Api;
use gradpool_core::privacy::{self, DataKey, SealedKey};
use gradpool_core::spec::{KeyHolder, KeyHolders};
use gradpool_core::wire::{JobKey, ProviderView};
use gradpool_core::{JobSpec, Sha256Hex};
use std::path::{Path, PathBuf};

/// Where a customer's data keys are kept, one file per job (mode 0600):
/// `keys/` under `$GRADPOOL_HOME` (default `~/.gradpool`) unless given.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl Default for KeyStore {
    fn default() -> KeyStore {
        KeyStore {
            dir: crate::credentials::home().join("keys"),
        }
    }
}

impl KeyStore {
    pub fn at(dir: &Path) -> KeyStore {
        KeyStore {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Keeps `key` under `name` (a job id, or a sealed dataset's digest
    /// before the job has one).
    pub fn save(&self, name: &str, key: &DataKey) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(key.to_hex().as_bytes())?;
        f.sync_all()?;
        Ok(path)
    }

    /// Renames the key kept as `from` to `to`.
    pub fn rename(&self, from: &str, to: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(to);
        std::fs::rename(self.path(from), &path)
            .with_context(|| format!("cannot keep the data key as {}", path.display()))?;
        Ok(path)
    }

    /// The data key of job `job`.
    pub fn load(&self, job: &str) -> anyhow::Result<DataKey> {
        let path = self.path(job);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "job {job} is confidential and its data key is not here ({}): fetch it on the \
                 machine that submitted it, or copy the key file",
                path.display()
            )
        })?;
        DataKey::from_hex(&text).with_context(|| format!("{} is not a data key", path.display()))
    }
}

/// The providers that may hold the key, as the spec says, among those the
/// pool lists: each with an announced encryption key its own node key
/// signed. A listed provider the pool does not know, or whose key does
/// not check, is an error: the customer named it.
pub fn key_holders<'a>(
    holders: &KeyHolders,
    providers: &'a [ProviderView],
) -> anyhow::Result<Vec<&'a ProviderView>> {
    let checked = |p: &&ProviderView| p.encryption_key.as_ref().is_some_and(|k| k.is_from(&p.id));
    match holders {
        KeyHolders::Isolated => {
            let certified: Vec<_> = providers
                .iter()
                .filter(|p| {
                    p.tier
                        .as_ref()
                        .is_some_and(|t| t.tier == gradpool_core::state::ProviderTier::Isolated)
                })
                .filter(checked)
                .collect();
            if certified.is_empty() {
                bail!("privacy.providers = \"isolated\": no provider of this pool is certified into the isolated tier now");
            }
            Ok(certified)
        }
        KeyHolders::Any => {
            let all: Vec<_> = providers.iter().filter(checked).collect();
            if all.is_empty() {
                bail!("privacy.providers = \"any\": no provider of this pool announced an encryption key");
            }
            Ok(all)
        }
        KeyHolders::Listed(list) => list
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let found = providers.iter().find(|p| match h {
                    KeyHolder::Id(id) => p.id == *id,
                    KeyHolder::Key(key) => p.encryption_key.as_ref().is_some_and(|k| k.key == *key),
                });
                let named = match h {
                    KeyHolder::Id(id) => id.to_string(),
                    KeyHolder::Key(key) => key.to_string(),
                };
                let p = found.with_context(|| {
                    format!("privacy.providers[{i}]: {named} is not a provider of this pool")
                })?;
                if !checked(&p) {
                    bail!(
                        "privacy.providers[{i}]: {} announced no encryption key signed by its node key",
                        p.id
                    );
                }
                Ok(p)
            })
            .collect(),
    }
}

/// A confidential job made ready to submit: its sealed dataset, and its
/// data key sealed to each holder.
pub struct Sealed {
    pub key: DataKey,
    /// The sealed dataset, in the caller's work directory.
    pub data: PathBuf,
    pub data_sha256: Sha256Hex,
    pub keys: Vec<JobKey>,
    /// A native job's data shape (`None` for a container job).
    pub shape: Option<gradpool_core::model::DataShape>,
}

/// Seals `spec`'s dataset `data` into `work` under `key` (fresh for the
/// job), and seals the key to the holders `privacy.providers` allows among
/// the pool's providers.
pub async fn seal_job(
    api: &Api,
    spec: &JobSpec,
    (data, key): (&Path, DataKey),
    work: &Path,
) -> anyhow::Result<Sealed> {
    let privacy = spec.privacy.as_ref().context("not a confidential spec")?;
    let providers: Vec<ProviderView> = api.get("/v1/providers").await?;
    let holders = key_holders(&privacy.providers, &providers)?;
    if privacy.providers == KeyHolders::Any {
        eprintln!(
            "privacy.providers = \"any\": the data key goes to all {} providers with a key; this \
             keeps the data from the pool's operator and from observers, not from providers",
            holders.len()
        );
    }
    // A native job's model is sized by its data, which the pool cannot
    // read: its shape is declared. A container job's is its script's.
    let shape = match spec.container() {
        Some(_) => None,
        None => {
            let file = std::fs::File::open(data)
                .with_context(|| format!("cannot read data file {}", data.display()))?;
            let shape = gradpool_core::data::data_shape(spec, std::io::BufReader::new(file))
                .map_err(|e| anyhow::anyhow!("data: {e}"))?;
            Some(shape)
        }
    };
    let sealed = work.join("data.sealed");
    let data_sha256 = privacy::seal_file(&key, data, &sealed)
        .with_context(|| format!("cannot seal {}", data.display()))?;
    let keys = holders
        .iter()
        .filter_map(|p| {
            let announced = p.encryption_key.as_ref()?;
            Some(JobKey {
                provider: p.id.clone(),
                sealed_key: SealedKey::seal(&key, &p.id, &announced.key, &data_sha256),
            })
        })
        .collect();
    Ok(Sealed {
        key,
        data: sealed,
        data_sha256,
        keys,
        shape,
    })
}

/// Seals `path` into `work` as `name` under `key`, for upload; the sealed
/// file and its digest.
pub fn seal_into(
    key: &DataKey,
    path: &Path,
    work: &Path,
    name: &str,
) -> anyhow::Result<(PathBuf, Sha256Hex)> {
    let to = work.join(format!("{name}.sealed"));
    let sha = privacy::seal_file(key, path, &to)
        .with_context(|| format!("cannot seal {}", path.display()))?;
    Ok((to, sha))
}

/// Opens the sealed file `sealed` of job `job` into `to` with the job's
/// kept key.
pub fn open(keys: &KeyStore, job: &str, sealed: &Path, to: &Path) -> anyhow::Result<()> {
    let key = keys.load(job)?;
    privacy::open_file(&key, sealed, to)
        .with_context(|| format!("cannot open {} with job {job}'s data key", sealed.display()))?;
    Ok(())
}
