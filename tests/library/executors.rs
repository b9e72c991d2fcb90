//! The library's futures run under any executor: a coordinator saves and
//! loads under `futures::executor::block_on` and under a tokio runtime.
//! Nothing here uses the tests' own runtime (async-std): the helpers run
//! `helper::serve_blocking` on threads of their own, and the deadline is a
//! channel's, not a timer's.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::util::{builder, pattern, sock, tmpdir, Fake, TEST_TIMEOUT};
use dbus_vmstate::helper::{self, State};

/// Saves a streaming and a plain helper, wipes them, loads them back.
async fn save_and_load(dir: PathBuf) {
    let c = builder(&dir, &["a", "b"]).bind().unwrap();
    let a = Fake::new("a", pattern(4097, 1));
    let b = Fake::new("b", pattern(100_000, 2)).plain();
    let helpers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|fake| {
            let (socket, options) = (sock(&dir, fake.id()), fake.options());
            thread::spawn(move || helper::serve_blocking(socket, fake, options))
        })
        .collect();
    c.wait_connected(Duration::from_secs(10)).await.unwrap();
    let (bytes, saved) = c.save(Vec::new()).await.unwrap();
    assert_eq!(saved.helpers.len(), 2);
    a.set_data(Vec::new());
    b.set_data(Vec::new());
    let loaded = c.load(std::io::Cursor::new(bytes), None).await.unwrap();
    assert_eq!(loaded.helpers.len(), 2);
    assert!(a.data() == pattern(4097, 1), "a came back different");
    assert!(b.data() == pattern(100_000, 2), "b came back different");
    assert_eq!((a.saves(), a.loads(), b.saves(), b.loads()), (1, 1, 1, 1));
    c.shutdown().await;
    for h in helpers {
        h.join().unwrap().unwrap();
    }
}

/// Runs `body` on a thread of its own, failing the test if it has not
/// finished within [`TEST_TIMEOUT`]; a panic in it fails the test as is.
fn with_deadline(body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let thread = thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(TEST_TIMEOUT) {
        Ok(()) => thread.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {TEST_TIMEOUT:?}")
        }
    }
}

#[test]
fn coordinator_saves_and_loads_under_futures_executor() {
    let dir = tmpdir();
    let path = dir.path().to_path_buf();
    with_deadline(move || futures::executor::block_on(save_and_load(path)));
}

#[test]
fn coordinator_saves_and_loads_under_tokio() {
    let dir = tmpdir();
    let path = dir.path().to_path_buf();
    with_deadline(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(save_and_load(path));
    });
}
