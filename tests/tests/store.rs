//! The file store's interface, against the store the test run selects: the local folder, or
//! (`DOCFLEET_TEST_STORE=s3`) a bucket of the real S3-compatible server `deploy/local/test`
//! starts. What the fleet relies on holds for both.

use docfleet_shared::store::{FileStore, StoreError};
use docfleet_tests::test_store;
use futures_util::TryStreamExt;

/// A store of its own, removed at the end.
fn store_for(test: &str) -> (FileStore, docfleet_shared::settings::StoreSettings) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let settings = test_store(&format!("dft-store-{test}-{}", &id[..8]));
    (FileStore::open(&settings).expect("open"), settings)
}

async fn clean(store: &FileStore, settings: &docfleet_shared::settings::StoreSettings) {
    store.remove_dir("projects").await.expect("remove_dir");
    let _ = std::fs::remove_dir_all(&settings.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_written_read_and_removed() {
    let (store, settings) = store_for("objects");
    store.check().await.expect("the store answers");
    let key = "projects/p/files/ab/f1";
    store.put(key, b"hello").await.unwrap();
    assert_eq!(store.get(key).await.unwrap(), b"hello");
    assert_eq!(store.size(key).await.unwrap(), 5);
    let chunks: Vec<bytes::Bytes> = store
        .read_stream(key)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let streamed = chunks.concat();
    assert_eq!(streamed, b"hello");
    assert!(matches!(
        store.get("projects/p/files/ab/none").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.size("projects/p/files/ab/none").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.put("../escape", b"x").await,
        Err(StoreError::InvalidKey(_))
    ));

    // A worker reads on a blocking thread, and writes there too.
    let (blocking, k) = (store.clone(), key.to_owned());
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = blocking.open_blocking(&k)?;
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read");
        blocking.write_blocking("projects/p/results/b1/ab/j1.json", b"{}")?;
        blocking.sync_blocking()?;
        Ok::<_, StoreError>(text)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read, "hello");
    assert_eq!(
        store.get("projects/p/results/b1/ab/j1.json").await.unwrap(),
        b"{}"
    );

    store.remove(key).await.unwrap();
    store
        .remove(key)
        .await
        .expect("removing what is gone is fine");
    assert!(matches!(store.get(key).await, Err(StoreError::NotFound(_))));
    store.remove_dir("projects/p/results/b1").await.unwrap();
    assert!(matches!(
        store.get("projects/p/results/b1/ab/j1.json").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .remove_dir("projects/p/results/b1")
        .await
        .expect("removing a folder that is gone is fine");
    clean(&store, &settings).await;
}

/// An upload is streamed in pieces (in a bucket: a multipart upload past its first part) and
/// appears only when committed; an aborted one leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_object_appears_whole_on_commit_and_not_at_all_on_abort() {
    let (store, settings) = store_for("staged");
    let key = "projects/p/files/cd/big";
    let chunk: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let mut staged = store.stage(key).await.unwrap();
    for _ in 0..12 {
        staged.write(&chunk).await.unwrap();
    }
    assert!(
        matches!(store.get(key).await, Err(StoreError::NotFound(_))),
        "visible before its commit"
    );
    assert_eq!(staged.commit().await.unwrap(), 12 * chunk.len() as u64);
    let got = store.get(key).await.unwrap();
    assert_eq!(got.len(), 12 * chunk.len());
    assert!(got.chunks(chunk.len()).all(|c| c == chunk.as_slice()));

    let dropped = "projects/p/files/cd/dropped";
    let mut staged = store.stage(dropped).await.unwrap();
    staged.write(&chunk).await.unwrap();
    staged.abort().await;
    assert!(matches!(
        store.get(dropped).await,
        Err(StoreError::NotFound(_))
    ));
    clean(&store, &settings).await;
}

/// A store that cannot be reached, or refuses the credentials, is told at start.
#[tokio::test]
async fn a_store_that_does_not_answer_is_told_at_start() {
    let (_, mut settings) = store_for("unreachable");
    let mut leftover = None;
    match settings.backend {
        docfleet_shared::settings::StoreBackend::S3 => {
            let mut wrong_key = settings.clone();
            wrong_key.s3.secret_key = "not-the-secret".into();
            let store = FileStore::open(&wrong_key).unwrap();
            assert!(store.check().await.is_err(), "a wrong secret key passed");
            settings.s3.endpoint = Some("http://127.0.0.1:9".into());
        }
        docfleet_shared::settings::StoreBackend::Local => {
            // A folder that cannot be made: below a file.
            let file = std::env::temp_dir().join(format!("dft-store-{}", uuid::Uuid::new_v4()));
            std::fs::write(&file, b"x").unwrap();
            settings.root = file.join("store");
            leftover = Some(file);
        }
    }
    let store = FileStore::open(&settings).unwrap();
    let checked = store.check().await;
    if let Some(file) = leftover {
        let _ = std::fs::remove_file(file);
    }
    assert!(checked.is_err());
}
