//! Confidential jobs at the pool: the encryption keys providers announce,
//! bound to their node keys, as customers read them to seal data keys.

mod common;

use common::*;
use gradpool_core::commitment::NodeKey;
use gradpool_core::privacy::{AnnouncedKey, EncryptionKey};
use gradpool_core::wire::ProviderView;

#[tokio::test]
async fn a_provider_announces_its_encryption_key_bound_to_its_node_key() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let p = tp.provider("keyed").await;
    let bare = tp.provider_with("bare", |p| p.encryption = None).await;
    let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let keyed = listed.iter().find(|v| v.id == p.key.provider_id()).unwrap();
    let announced = keyed.encryption_key.as_ref().expect("an announced key");
    assert_eq!(
        announced.key,
        p.encryption.as_ref().unwrap().public(),
        "the key the agent holds"
    );
    assert!(announced.is_from(&p.key.provider_id()));
    let none = listed
        .iter()
        .find(|v| v.id == bare.key.provider_id())
        .unwrap();
    assert_eq!(none.encryption_key, None);

    // A key signed by another node key is refused at registration, and
    // the provider's announced key stays as it was.
    let mut body = p.register_body(vec![]).await;
    body.encryption_key = Some(AnnouncedKey::announce(
        &NodeKey::generate(),
        &EncryptionKey::generate(),
    ));
    let e = p
        .client
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.contains("encryption_key"), "{e:?}");
    let mut body = p.register_body(vec![]).await;
    let swapped = AnnouncedKey {
        key: EncryptionKey::generate().public(),
        ..AnnouncedKey::announce(&p.key, p.encryption.as_ref().unwrap())
    };
    body.encryption_key = Some(swapped);
    p.client
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let again = listed.iter().find(|v| v.id == p.key.provider_id()).unwrap();
    assert_eq!(again.encryption_key.as_ref(), Some(announced));
}

const TEXT: &[u8] =
    b"To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n";

/// The test spec, confidential, its key holders as `providers`.
fn confidential(providers: &str) -> String {
    format!("{SPEC}\n[privacy]\nconfidential = true\nproviders = {providers}\n")
}

async fn submit_sealed(
    c: &Client,
    spec: &str,
    data: &gradpool_core::Sha256Hex,
    keys: Vec<gradpool_core::wire::JobKey>,
    shape: Option<gradpool_core::model::DataShape>,
) -> Reply {
    c.post(
        "/v1/jobs",
        &gradpool_core::wire::SubmitJob {
            spec_toml: spec.to_owned(),
            data_sha256: data.clone(),
            booking: None,
            sealed_keys: keys,
            data_shape: shape,
        },
    )
    .await
}

/// `key` sealed to provider `p` for the sealed dataset `data`.
fn sealed_for(
    key: &gradpool_core::privacy::DataKey,
    p: &TestProvider,
    data: &gradpool_core::Sha256Hex,
) -> gradpool_core::wire::JobKey {
    gradpool_core::wire::JobKey {
        provider: p.key.provider_id(),
        sealed_key: gradpool_core::privacy::SealedKey::seal(
            key,
            &p.key.provider_id(),
            &p.encryption.as_ref().unwrap().public(),
            data,
        ),
    }
}

/// The sealed key assignment `a` carries, as provider `p` opens it.
fn opened_by(
    p: &TestProvider,
    a: &gradpool_core::wire::Assignment,
) -> Result<gradpool_core::privacy::DataKey, gradpool_core::privacy::PrivacyError> {
    a.sealed_key.as_ref().expect("a sealed key").open(
        p.encryption.as_ref().unwrap(),
        &p.key.provider_id(),
        &a.data_sha256,
    )
}

/// A confidential job: the pool takes only a sealed dataset, keys sealed
/// to providers the spec allows, and the data's shape; it leases the
/// job's segments and replays only to key holders, each with its own
/// sealed key; a checkpoint committed in the clear is refused.
#[tokio::test]
async fn a_confidential_job_goes_only_to_its_key_holders_and_only_sealed() {
    use gradpool_core::privacy::{seal_bytes, DataKey};
    use gradpool_core::wire::{JobKey, JobView, TaskKind};
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let holder = tp.provider_with("holder", |p| p.validate = true).await;
    let validator = tp
        .provider_with("validator", |p| {
            p.validate = true;
            p.train = false;
        })
        .await;
    let outsider = tp.provider_with("outsider", |p| p.validate = true).await;
    let keyless = tp.provider_with("keyless", |p| p.encryption = None).await;

    let key = DataKey::generate();
    let sealed_data = seal_bytes(&key, TEXT);
    let data = alice.upload(&sealed_data).await;
    let plain = alice.upload(TEXT).await;
    let shape = gradpool_core::data::data_shape(
        &gradpool_core::JobSpec::from_toml_str(SPEC).unwrap(),
        TEXT,
    )
    .unwrap();
    let seal_for = |p: &TestProvider, data: &gradpool_core::Sha256Hex| sealed_for(&key, p, data);
    let listed = format!(
        "[\"{}\", \"{}\"]",
        holder.key.provider_id(),
        validator.encryption.as_ref().unwrap().public()
    );
    let spec = confidential(&listed);
    let keys = vec![seal_for(&holder, &data), seal_for(&validator, &data)];

    // What a confidential job must bring.
    let e = submit_sealed(&alice, &spec, &plain, keys.clone(), Some(shape))
        .await
        .err(400);
    assert!(e.message.contains("must be sealed"), "{e:?}");
    let e = submit_sealed(&alice, &spec, &data, keys.clone(), None)
        .await
        .err(400);
    assert!(e.message.contains("data_shape"), "{e:?}");
    let empty = gradpool_core::model::DataShape::Text { vocab_size: 0 };
    let e = submit_sealed(&alice, &spec, &data, keys.clone(), Some(empty))
        .await
        .err(400);
    assert!(e.message.contains("data_shape.vocab_size"), "{e:?}");
    // A vocabulary no device could hold is refused by its size.
    let huge = gradpool_core::model::DataShape::Text {
        vocab_size: usize::MAX,
    };
    let e = submit_sealed(&alice, &spec, &data, keys.clone(), Some(huge))
        .await
        .err(400);
    assert_eq!(e.code, "invalid_spec", "{e:?}");
    let e = submit_sealed(&alice, &spec, &data, Vec::new(), Some(shape))
        .await
        .err(400);
    assert!(e.message.contains("sealed_keys"), "{e:?}");
    let mut extra = keys.clone();
    extra.push(seal_for(&outsider, &data));
    let e = submit_sealed(&alice, &spec, &data, extra, Some(shape))
        .await
        .err(400);
    assert!(e.message.contains("not among privacy.providers"), "{e:?}");
    let bare = JobKey {
        provider: keyless.key.provider_id(),
        sealed_key: keys[0].sealed_key.clone(),
    };
    let e = submit_sealed(
        &alice,
        &confidential("\"any\""),
        &data,
        vec![bare],
        Some(shape),
    )
    .await
    .err(400);
    assert!(e.message.contains("announced no encryption key"), "{e:?}");
    let e = submit_sealed(
        &alice,
        &confidential("\"isolated\""),
        &data,
        keys.clone(),
        Some(shape),
    )
    .await
    .err(400);
    assert!(e.message.contains("isolated"), "{e:?}");
    let e = submit_sealed(&alice, SPEC, &data, keys.clone(), Some(shape))
        .await
        .err(400);
    assert!(e.message.contains("only for a confidential job"), "{e:?}");

    let spec = format!("{spec}[verification]\nlevel = \"paranoid\"\n");
    let job: JobView = submit_sealed(&alice, &spec, &data, keys, Some(shape))
        .await
        .ok();
    // Not a key holder: nothing, however often it asks.
    assert!(outsider.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert!(keyless.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let a = holder.take().await;
    assert_eq!(a.job_id, job.id);
    let opened = opened_by(&holder, &a).unwrap();
    assert_eq!(opened, key);
    // Without a lease, the sealed data is not even readable.
    let (status, _) = outsider
        .client
        .get_bytes(&format!("/v1/blobs/{data}"))
        .await;
    assert_eq!(status, 404);

    // A sealed file the size of no checkpoint of the job's model is
    // refused.
    let tiny = seal_bytes(&key, b"not a checkpoint");
    holder.client.upload(&tiny).await;
    let e = holder
        .commit(&a.task_id, &holder.commit_for(&a, &tiny))
        .await
        .err(400);
    assert!(
        e.message.contains("a checkpoint of this job's model takes"),
        "{e:?}"
    );
    let clear = checkpoint(&a, b"first");
    // A checkpoint in the clear is refused; a sealed one is taken.
    holder.client.upload(&clear).await;
    let e = holder
        .commit(&a.task_id, &holder.commit_for(&a, &clear))
        .await
        .err(400);
    assert!(e.message.contains("sealed"), "{e:?}");
    let sealed = seal_bytes(&key, &clear);
    holder.client.upload(&sealed).await;
    holder
        .commit(&a.task_id, &holder.commit_for(&a, &sealed))
        .await
        .ok::<serde_json::Value>();

    // The replay goes to the other key holder, never to the outsider.
    assert!(outsider.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let r = validator.take().await;
    assert_eq!(r.kind, TaskKind::Replay);
    assert!(opened_by(&validator, &r).is_ok());
    // The holder's sealed key does not open for the validator.
    assert!(opened_by(&validator, &a).is_err());
}

/// A confidential container job brings its image and files sealed under
/// the data key, and no data shape (its script sizes its model); each
/// refusal names the field. Its key holder, running containers, is leased
/// the segment with its sealed key; a parallel confidential job is refused.
#[tokio::test]
async fn a_confidential_container_job_brings_its_image_and_files_sealed() {
    use gradpool_core::privacy::{seal_bytes, DataKey};
    use gradpool_core::wire::JobView;
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let holder = tp.provider_with("holder", |p| p.containers = true).await;
    let key = DataKey::generate();
    let data = alice.upload(&seal_bytes(&key, TEXT)).await;
    let (image_bytes, script) = ([7u8; 2048], b"print('train')\n");
    let image = alice.upload(&seal_bytes(&key, &image_bytes)).await;
    let file = alice.upload(&seal_bytes(&key, script)).await;
    let clear_image = alice.upload(&image_bytes).await;
    let clear_file = alice.upload(script).await;
    let spec = |image: &gradpool_core::Sha256Hex, file: &gradpool_core::Sha256Hex| {
        format!(
            "name = \"ct\"\n[model]\nkind = \"container\"\n[data]\nformat = \"text\"\n\
             [train]\nseed = 1\nsteps = 20\nbatch_size = 4\nlr = 0.001\ncheckpoint_every = 10\n\
             [container]\ncommand = [\"python3\", \"/job/train.py\"]\nfiles = [\"train.py\"]\n\
             memory_gib = 1\nimage_sha256 = \"{image}\"\n\
             [container.file_sha256]\n\"train.py\" = \"{file}\"\n\
             [privacy]\nconfidential = true\nproviders = \"any\"\n"
        )
    };
    let keys = vec![sealed_for(&key, &holder, &data)];

    let e = submit_sealed(
        &alice,
        &spec(&clear_image, &file),
        &data,
        keys.clone(),
        None,
    )
    .await
    .err(400);
    assert!(
        e.message.contains("container.image_sha256") && e.message.contains("must be sealed"),
        "{e:?}"
    );
    let e = submit_sealed(
        &alice,
        &spec(&image, &clear_file),
        &data,
        keys.clone(),
        None,
    )
    .await
    .err(400);
    assert!(
        e.message.contains("container.file_sha256.train.py") && e.message.contains("sealed"),
        "{e:?}"
    );
    let shape = gradpool_core::model::DataShape::Text { vocab_size: 20 };
    let e = submit_sealed(
        &alice,
        &spec(&image, &file),
        &data,
        keys.clone(),
        Some(shape),
    )
    .await
    .err(400);
    assert!(
        e.message.contains("data_shape: only for a native job"),
        "{e:?}"
    );
    let parallel = format!(
        "{}[parallel]\nworkers = 2\ninner_steps = 10\n",
        confidential("\"any\"")
    );
    let e = submit_sealed(&alice, &parallel, &data, keys.clone(), None)
        .await
        .err(400);
    assert!(
        e.message.contains("parallel job cannot be confidential"),
        "{e:?}"
    );

    let job: JobView = submit_sealed(&alice, &spec(&image, &file), &data, keys, None)
        .await
        .ok();
    let a = holder.take().await;
    assert_eq!(a.job_id, job.id);
    let opened = opened_by(&holder, &a).unwrap();
    assert_eq!(opened, key);
    // Leased, the holder reads the sealed image: what it opens is the
    // customer's.
    let (status, got) = holder.client.get_bytes(&format!("/v1/blobs/{image}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        gradpool_core::privacy::open_bytes(&opened, &got).unwrap(),
        image_bytes
    );
}

/// A provider started for the isolated tier sends its host compliance
/// report signed by its node key; the pool shows it, and refuses one
/// another key signed or one edited after signing.
#[tokio::test]
async fn an_isolated_providers_signed_compliance_report_is_shown_as_sent() {
    use gradpool_core::compliance::{Check, CheckName, ComplianceReport};
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let p = tp.provider("workstation").await;
    let report = ComplianceReport {
        time: 1_765_000_000,
        checks: CheckName::ALL
            .iter()
            .map(|n| Check {
                name: *n,
                passed: *n != CheckName::SecureBoot,
                detail: "checked".into(),
            })
            .collect(),
        attestation: None,
    };
    let mut body = p.register_body(vec![]).await;
    body.compliance = Some(report.clone().sign(&NodeKey::generate()));
    let e = p
        .client
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.contains("compliance"), "{e:?}");
    let mut body = p.register_body(vec![]).await;
    let mut edited = report.clone().sign(&p.key);
    edited.report.checks[5].passed = true;
    body.compliance = Some(edited);
    p.client
        .post("/v1/providers/register", &body)
        .await
        .err(400);

    let mut body = p.register_body(vec![]).await;
    body.compliance = Some(report.clone().sign(&p.key));
    p.client
        .post("/v1/providers/register", &body)
        .await
        .ok::<serde_json::Value>();
    let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let shown = listed
        .iter()
        .find(|v| v.id == p.key.provider_id())
        .and_then(|v| v.compliance.clone())
        .expect("the report");
    assert!(shown.is_signed_by(&p.key.public_key()));
    assert_eq!(shown.report, report);
    assert_eq!(shown.report.failures(), ["secure_boot"]);
}

/// A compliance report where every check passes but `failing`.
fn report(
    failing: Option<gradpool_core::compliance::CheckName>,
) -> gradpool_core::compliance::ComplianceReport {
    use gradpool_core::compliance::{Check, CheckName, ComplianceReport};
    ComplianceReport {
        time: 1_765_000_000,
        checks: CheckName::ALL
            .iter()
            .map(|n| Check {
                name: *n,
                passed: Some(*n) != failing,
                detail: "checked".into(),
            })
            .collect(),
        attestation: None,
    }
}

/// Re-registers `p` with `r`, signed.
async fn report_as(p: &mut TestProvider, r: gradpool_core::compliance::ComplianceReport) {
    let mut body = p.register_body(vec![]).await;
    body.compliance = Some(r.sign(&p.key));
    let reg: gradpool_core::wire::Registered =
        p.client.post("/v1/providers/register", &body).await.ok();
    p.client.token = Some(reg.token);
}

/// The operator certifies a provider whose report passes, for a time;
/// a job asking for the isolated tier goes only to it; its first failing
/// report loses the tier (no new work reaches it), and an expired
/// certification stops matching.
#[tokio::test]
async fn a_certified_workstation_alone_gets_isolated_work_until_it_fails_or_expires() {
    use gradpool_core::compliance::CheckName;
    use gradpool_core::state::ProviderTier;
    use gradpool_core::wire::JobView;
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let mut station = tp.provider("station").await;
    let mut other = tp.provider("other").await;
    let id = station.key.provider_id();
    // No report, or a failing one: no certification.
    let e = tp
        .pool
        .certify(id.as_str(), ProviderTier::Isolated, 30)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no compliance report"), "{e}");
    report_as(&mut other, report(Some(CheckName::EncryptedDataDir))).await;
    let e = tp
        .pool
        .certify(other.key.provider_id().as_str(), ProviderTier::Isolated, 30)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("encrypted_data_dir"), "{e}");
    report_as(&mut station, report(None)).await;
    tp.pool
        .certify(id.as_str(), ProviderTier::Isolated, 30)
        .await
        .unwrap();
    let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let shown = listed.iter().find(|v| v.id == id).unwrap();
    assert_eq!(
        shown.tier.as_ref().map(|t| t.tier),
        Some(ProviderTier::Isolated)
    );

    let spec = format!("{SPEC}\n[resources]\ntier = \"isolated\"\n");
    let job: JobView = alice.submit(&spec, TEXT).await;
    assert!(other.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let a = station.take().await;
    assert_eq!(a.job_id, job.id);
    let ckpt = checkpoint(&a, b"one");
    station.client.upload(&ckpt).await;
    station
        .commit(&a.task_id, &station.commit_for(&a, &ckpt))
        .await
        .ok::<serde_json::Value>();

    // Its next report fails: the tier is lost, no new work reaches it.
    report_as(&mut station, report(Some(CheckName::NoOtherUsers))).await;
    assert!(station.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    assert_eq!(listed.iter().find(|v| v.id == id).unwrap().tier, None);

    // Certified again, it takes the next segment; expired, no more.
    report_as(&mut station, report(None)).await;
    tp.pool
        .certify(id.as_str(), ProviderTier::Isolated, 1)
        .await
        .unwrap();
    let b = station.take().await;
    assert_eq!((b.job_id.clone(), b.segment), (job.id.clone(), 1));
    let ckpt = checkpoint(&b, b"two");
    station.client.upload(&ckpt).await;
    station
        .commit(&b.task_id, &station.commit_for(&b, &ckpt))
        .await
        .ok::<serde_json::Value>();
    tp.advance(86_400_000 + 1);
    assert!(station.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    assert_eq!(listed.iter().find(|v| v.id == id).unwrap().tier, None);
}

/// Between registrations the pool asks a certified provider for its
/// checks at random times: a passing report keeps the tier, a failing one
/// loses it, and so does no report by the deadline.
#[tokio::test]
async fn a_certified_provider_is_checked_again_at_random_times() {
    use gradpool_core::compliance::CheckName;
    use gradpool_core::state::ProviderTier;
    let tp = TestPool::start_with(|c| c.compliance_interval_seconds = 60).await;
    let alice = tp.customer("alice").await;
    let mut station = tp.provider("station").await;
    let id = station.key.provider_id();
    report_as(&mut station, report(None)).await;
    tp.pool
        .certify(id.as_str(), ProviderTier::Isolated, 30)
        .await
        .unwrap();
    let tier = |alice: &Client| {
        let (alice, id) = (alice.clone(), id.clone());
        async move {
            let listed: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
            listed.into_iter().find(|v| v.id == id).unwrap().tier
        }
    };
    // The first heartbeat plans the check; an hour on (a mean of a
    // minute), it is due, once.
    assert!(!station.heartbeat(&[], 0, 0).await.compliance_due);
    tp.advance(3_600_000);
    assert!(station.heartbeat(&[], 0, 0).await.compliance_due);
    assert!(!station.heartbeat(&[], 0, 0).await.compliance_due);
    let passed: serde_json::Value = station
        .client
        .post("/v1/providers/compliance", &report(None).sign(&station.key))
        .await
        .ok();
    assert_eq!(passed["passed"], true);
    assert!(tier(&alice).await.is_some());
    // Another key's report is refused; the failing one loses the tier.
    station
        .client
        .post(
            "/v1/providers/compliance",
            &report(None).sign(&NodeKey::generate()),
        )
        .await
        .err(400);
    tp.advance(3_600_000);
    assert!(station.heartbeat(&[], 0, 0).await.compliance_due);
    let failed: serde_json::Value = station
        .client
        .post(
            "/v1/providers/compliance",
            &report(Some(CheckName::Iommu)).sign(&station.key),
        )
        .await
        .ok();
    assert_eq!(failed["passed"], false);
    assert!(tier(&alice).await.is_none());

    // Certified again (on a passing report): asked, and silent past the
    // deadline, it loses it.
    station
        .client
        .post("/v1/providers/compliance", &report(None).sign(&station.key))
        .await
        .ok::<serde_json::Value>();
    tp.pool
        .certify(id.as_str(), ProviderTier::Isolated, 30)
        .await
        .unwrap();
    assert!(tier(&alice).await.is_some());
    station.heartbeat(&[], 0, 0).await;
    tp.advance(3_600_000);
    assert!(station.heartbeat(&[], 0, 0).await.compliance_due);
    tp.advance(11 * 60 * 1000);
    assert!(!station.heartbeat(&[], 0, 0).await.compliance_due);
    assert!(tier(&alice).await.is_none());
}
