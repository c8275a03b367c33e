use std::sync::Arc;

use skiff_store::{RedbStore, Store};

use super::{EncryptedStore, EncryptionConfig};

const KEY1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/c2VjcmU="; // 32 bytes
const KEY2: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
const KEY3: &str = "MDEyMzQ1Njc4OWFiY2RlZg=="; // 16 bytes
const SECRET: &str = "/registry/core/secrets/default/db";

fn config(providers: &str) -> EncryptionConfig {
    EncryptionConfig::parse(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, '*.apps']\n  providers:\n{providers}"
    ))
    .expect("valid configuration")
}

fn aesgcm(name: &str, secret: &str) -> String {
    format!("  - aesgcm:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
}

fn secretbox(name: &str, secret: &str) -> String {
    format!("  - secretbox:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
}

const IDENTITY: &str = "  - identity: {}\n";

#[test]
fn aesgcm_round_trips_with_kubes_prefix_and_hides_the_plaintext() {
    let c = config(&aesgcm("k1", KEY1));
    let stored = c
        .seal(SECRET, b"hunter2-plaintext".to_vec())
        .expect("sealed");
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
    assert!(!stored.windows(7).any(|w| w == b"hunter2"));
    assert_eq!(
        c.open(SECRET, stored).expect("opened"),
        b"hunter2-plaintext"
    );
}

#[test]
fn secretbox_and_128_bit_aesgcm_round_trip() {
    let c = config(&secretbox("sb", KEY2));
    let stored = c.seal(SECRET, b"value".to_vec()).expect("sealed");
    assert!(stored.starts_with(b"k8s:enc:secretbox:v1:sb:"));
    assert_eq!(c.open(SECRET, stored).expect("opened"), b"value");
    let c = config(&aesgcm("short", KEY3));
    let stored = c.seal(SECRET, b"value".to_vec()).expect("sealed");
    assert_eq!(c.open(SECRET, stored).expect("opened"), b"value");
}

#[test]
fn rotation_writes_with_the_new_first_key_and_still_reads_the_old_one() {
    let old = config(&aesgcm("k1", KEY1));
    let written_before = old.seal(SECRET, b"v1".to_vec()).expect("sealed");
    let rotated = config(&format!("{}{}", secretbox("k2", KEY2), aesgcm("k1", KEY1)));
    assert_eq!(
        rotated.open(SECRET, written_before).expect("old key reads"),
        b"v1"
    );
    let rewritten = rotated.seal(SECRET, b"v1".to_vec()).expect("sealed");
    assert!(rewritten.starts_with(b"k8s:enc:secretbox:v1:k2:"));
}

#[test]
fn a_missing_or_wrong_key_is_refused_with_a_clear_error() {
    let stored = config(&aesgcm("k1", KEY1))
        .seal(SECRET, b"v".to_vec())
        .expect("sealed");
    let err = config(&aesgcm("other", KEY1))
        .open(SECRET, stored.clone())
        .expect_err("unknown key name");
    assert_eq!(
        err.to_string(),
        format!(
            "unable to transform key {SECRET:?}: no aesgcm key named \"k1\" in the encryption configuration"
        )
    );
    let err = config(&aesgcm("k1", KEY2))
        .open(SECRET, stored)
        .expect_err("wrong secret");
    assert!(err.to_string().contains("does not decrypt"), "{err}");
}

#[test]
fn a_value_moved_under_another_key_does_not_decrypt() {
    let c = config(&aesgcm("k1", KEY1));
    let stored = c.seal(SECRET, b"v".to_vec()).expect("sealed");
    assert!(
        c.open("/registry/core/secrets/default/other", stored)
            .is_err()
    );
}

#[test]
fn unencrypted_values_and_identity_first_are_read_and_written_in_the_clear() {
    let c = config(&format!("{IDENTITY}{}", aesgcm("k1", KEY1)));
    assert_eq!(c.seal(SECRET, b"{}".to_vec()).expect("identity"), b"{}");
    let c = config(&aesgcm("k1", KEY1));
    assert_eq!(
        c.open(SECRET, b"{\"a\":1}".to_vec()).expect("plain"),
        b"{\"a\":1}"
    );
}

#[test]
fn only_the_configured_resources_are_encrypted() {
    let c = config(&aesgcm("k1", KEY1));
    let plain = b"{}".to_vec();
    for key in [
        "/registry/core/configmaps/default/x",
        "/registry/batch/jobs/default/x",
    ] {
        assert_eq!(c.seal(key, plain.clone()).expect("clear"), plain, "{key}");
    }
    for key in [SECRET, "/registry/apps/deployments/default/x"] {
        assert_ne!(c.seal(key, plain.clone()).expect("sealed"), plain, "{key}");
    }
    let everything = EncryptionConfig::parse(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n{}",
        aesgcm("k1", KEY1)
    ))
    .expect("valid");
    assert_ne!(
        everything
            .seal("/registry/batch/jobs/default/x", plain.clone())
            .expect("sealed"),
        plain
    );
}

#[test]
fn bad_configurations_are_refused() {
    for (providers, message) in [
        (
            "  - aescbc:\n      keys: []\n",
            "provider aescbc is not supported",
        ),
        (
            &aesgcm("k1", "c2hvcnQ=") as &str,
            "aesgcm needs a key of 16 or 32 bytes, got 5",
        ),
        (
            "  - secretbox:\n      keys: []\n",
            "provider secretbox has no keys",
        ),
    ] {
        let err = EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .expect_err("refused");
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(text.contains(message), "{text}");
    }
    assert!(EncryptionConfig::parse("kind: Pod\napiVersion: v1\n").is_err());
}

#[tokio::test]
async fn the_store_wrapper_hides_values_from_the_backend_but_not_from_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).expect("store"));
    let store = EncryptedStore::new(Arc::clone(&inner), config(&aesgcm("k1", KEY1)));
    let mut watch = store.watch("/registry/", 0).await.expect("watch");
    let created = store
        .create(SECRET, b"{\"data\":\"plaintext\"}".to_vec())
        .await
        .expect("create");
    assert_eq!(created.value, b"{\"data\":\"plaintext\"}");
    let raw = inner.get(SECRET, 0).await.expect("get").expect("present");
    assert!(raw.value.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
    let read = store.get(SECRET, 0).await.expect("get").expect("present");
    assert_eq!(read.value, b"{\"data\":\"plaintext\"}");
    let listed = store
        .list(
            "/registry/core/secrets/",
            skiff_store::ListOptions::default(),
        )
        .await
        .expect("list");
    assert_eq!(listed.items[0].value, b"{\"data\":\"plaintext\"}");
    let event = futures::StreamExt::next(&mut watch)
        .await
        .expect("event")
        .expect("ok");
    assert_eq!(event.kv.value, b"{\"data\":\"plaintext\"}");
    let snapshot = store.snapshot().await.expect("snapshot");
    assert!(!snapshot.windows(9).any(|w| w == b"plaintext"));
    let deleted = store.delete(SECRET, None).await.expect("delete");
    assert_eq!(deleted.value, b"{\"data\":\"plaintext\"}");
}
