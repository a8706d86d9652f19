//! The spool's tests: durability order, the commit hook, recovery and
//! adoption of files other writers put in `queue/`.

use super::*;

/// What one rescan of `queue/` adopts.
async fn adopted(spool: &Spool) -> Vec<String> {
    spool.adopt_new(10).await.expect("adopt new messages")
}

#[tokio::test]
async fn store_load_finish_recover() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let spool = Spool::open(dir.path(), Arc::new(NoopHook)).expect("open the spool");
    let env = Envelope {
        from: String::new(),
        rcpts: vec!["a@x".into(), "b@x".into()],
    };
    let id = spool.new_id();
    spool
        .store(&id, &env, b"Subject: hi\r\n\r\nbody\r\n".to_vec())
        .await
        .expect("store the message");
    // A leftover in tmp/ is dropped on reopen; the queued one survives.
    fs::write(dir.path().join("tmp/junk"), b"TANDEM-SPOOL 1\nsize 99\n")
        .expect("write a leftover in tmp/");
    let spool = Spool::open(dir.path(), Arc::new(NoopHook)).expect("reopen the spool");
    assert!(!dir.path().join("tmp/junk").exists());
    assert_eq!(
        spool.recover().expect("recover the queue"),
        vec![id.clone()]
    );
    let msg = spool.load(&id).await.expect("load the message");
    assert_eq!(msg.envelope, env);
    assert_eq!(msg.body, b"Subject: hi\r\n\r\nbody\r\n");
    // b@x refused for good, a@x to retry: the queue file keeps only a@x.
    spool
        .finish(
            &msg,
            vec!["a@x".into()],
            vec![("b@x".into(), "550 no such user".into())],
        )
        .await
        .expect("finish with one recipient to retry");
    let msg = spool.load(&id).await.expect("reload the message");
    assert_eq!(msg.envelope.rcpts, vec!["a@x".to_string()]);
    assert!(dir.path().join("failed").join(&id).exists());
    spool
        .finish(&msg, vec![], vec![])
        .await
        .expect("finish the message");
    assert!(spool.recover().expect("recover the queue").is_empty());
}

/// A hook that refuses every commit and reports the paths of each call.
struct RefusingHook(tokio::sync::mpsc::UnboundedSender<Vec<PathBuf>>);

impl CommitHook for RefusingHook {
    fn commit<'a>(&'a self, paths: &'a [PathBuf]) -> HookFuture<'a> {
        let _ = self.0.send(paths.to_vec());
        Box::pin(async { Err(Error::Hook("refused".into())) })
    }
}

#[tokio::test]
async fn a_refused_message_is_removed_here_and_its_removal_committed() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let (tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let spool = Spool::open(dir.path(), Arc::new(RefusingHook(tx))).expect("open the spool");
    let env = Envelope {
        from: "f@x".into(),
        rcpts: vec!["a@x".into()],
    };
    let id = spool.new_id();
    let stored = spool.store(&id, &env, b"body\r\n".to_vec()).await;
    assert!(stored.is_err(), "the hook refused: no 250");
    assert!(
        spool.recover().expect("recover the queue").is_empty(),
        "not kept here"
    );
    let first = calls.recv().await.expect("receive the first commit");
    // The removal goes to the standbys too (a commit of the gone path).
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), calls.recv())
        .await
        .expect("receive the removal commit in time")
        .expect("receive the removal commit");
    assert_eq!(first, second);
    assert!(!second[0].exists());
    // Forgotten: the same id written by another process is adopted.
    fs::write(&second[0], encode(&env, b"body\r\n")).expect("write the same id again");
    assert_eq!(adopted(&spool).await, vec![id]);
}

/// A hook that says when it is entered, then waits to be released.
struct GateHook {
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl CommitHook for GateHook {
    fn commit<'a>(&'a self, _paths: &'a [PathBuf]) -> HookFuture<'a> {
        Box::pin(async {
            self.entered.notify_one();
            self.release.notified().await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_message_in_the_middle_of_store_is_not_adopted() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let gate = Arc::new(GateHook {
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let spool = Spool::open(dir.path(), gate.clone()).expect("open the spool");
    let env = Envelope {
        from: "f@x".into(),
        rcpts: vec!["a@x".into()],
    };
    let id = spool.new_id();
    let storing = tokio::spawn({
        let (spool, id, env) = (spool.clone(), id.clone(), env.clone());
        async move { spool.store(&id, &env, b"body\r\n".to_vec()).await }
    });
    gate.entered.notified().await;
    // Renamed into queue/, a complete spool file, hook not returned.
    let queued = fs::read(spool.queue_dir().join(&id)).expect("read the queued file");
    assert_eq!(decode(&queued).expect("decode the queued file").0, env);
    assert!(adopted(&spool).await.is_empty());
    gate.release.notify_one();
    storing
        .await
        .expect("join the store task")
        .expect("store the message");
    assert!(adopted(&spool).await.is_empty());
    // Junk is left alone; a valid foreign file is adopted once.
    fs::write(spool.queue_dir().join("junk"), b"TANDEM-SPOOL 1\nsize 9\n")
        .expect("write junk to queue/");
    fs::write(spool.queue_dir().join("other"), encode(&env, b"x"))
        .expect("write a foreign file to queue/");
    assert_eq!(adopted(&spool).await, vec!["other"]);
    assert!(adopted(&spool).await.is_empty());
    assert!(spool.queue_dir().join("junk").exists());
}

#[test]
fn truncated_file_is_corrupt() {
    let env = Envelope {
        from: "f@x".into(),
        rcpts: vec!["a@x".into()],
    };
    let mut bytes = encode_header(&env, 10);
    bytes.extend_from_slice(b"12345");
    assert!(decode(&bytes).unwrap_err().contains("truncated"));
}

#[test]
fn ids_are_unique() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let spool = Spool::open(dir.path(), Arc::new(NoopHook)).expect("open the spool");
    let ids: std::collections::HashSet<_> = (0..1000).map(|_| spool.new_id()).collect();
    assert_eq!(ids.len(), 1000);
}
