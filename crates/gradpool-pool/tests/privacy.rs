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
