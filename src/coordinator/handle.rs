//! The running coordinator: binding its sockets, its status, the entry
//! points of save and load, and shutdown.

use crate::stream::native::{ReadOptions, WriteOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::AbortHandle;

use super::peer::PeerConn;
use super::shared::Inner;
use super::{accept, load, qemu, save, socket};
use super::{Config, HelperSpec, HelperStatus, LoadReport, QemuStatus, SaveReport};
use crate::error::Error;
use crate::stream;

/// A running coordinator: its sockets are bound and helpers are accepted
/// in the background.
///
/// Drop it, or better call [`Coordinator::shutdown`], to stop: the sockets
/// are removed and the helpers' connections closed.
#[derive(Debug)]
pub struct Coordinator {
    inner: Arc<Inner>,
    /// Emptied by the first shutdown.
    accept_tasks: Mutex<Vec<AbortHandle>>,
    /// The socket files this coordinator bound; removed when dropped.
    bound: Mutex<Vec<socket::BoundPath>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one `take`, so a poisoned lock
    // still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coordinator {
    pub(super) fn bind_with(
        mut config: Config,
        mut preset: Vec<(String, std::os::unix::net::UnixListener)>,
        qemu: Option<std::os::unix::net::UnixListener>,
    ) -> Result<Self, Error> {
        for (i, (id, _)) in preset.iter().enumerate() {
            if !config.helpers.iter().any(|h| &h.id == id) {
                return Err(Error::Config {
                    reason: format!(
                        "a listening socket was given for helper {id:?}, which is not in the helper list"
                    ),
                });
            }
            if preset[..i].iter().any(|(other, _)| other == id) {
                return Err(Error::Config {
                    reason: format!("two listening sockets were given for helper {id:?}"),
                });
            }
        }
        let mut listeners = Vec::with_capacity(config.helpers.len());
        let mut bound = Vec::with_capacity(config.helpers.len());
        for spec in &mut config.helpers {
            match preset.iter().position(|(id, _)| *id == spec.id) {
                Some(pos) => {
                    let (_, listener) = preset.swap_remove(pos);
                    if let Some(path) = listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                    {
                        spec.socket = path;
                    }
                    listeners.push(listener);
                }
                None => {
                    // On error, the guards bound so far drop and remove
                    // their files.
                    let (listener, guard) =
                        socket::bind(&spec.id, &spec.socket, config.socket_owner)?;
                    listeners.push(listener);
                    bound.push(guard);
                }
            }
        }
        let qemu = match (qemu, &config.qemu_socket) {
            (Some(listener), _) => Some(listener),
            (None, Some(path)) => {
                let (listener, guard) = socket::bind(qemu::NAME, path, config.socket_owner)
                    .map_err(qemu::bind_error)?;
                bound.push(guard);
                Some(listener)
            }
            (None, None) => None,
        };
        Self::from_listeners(config, listeners, qemu, bound)
    }

    fn from_listeners(
        config: Config,
        listeners: Vec<std::os::unix::net::UnixListener>,
        qemu: Option<std::os::unix::net::UnixListener>,
        bound: Vec<socket::BoundPath>,
    ) -> Result<Self, Error> {
        let inner = Arc::new(Inner::new(config));
        let mut accept_tasks = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let spec = &inner.slots[index].spec;
            let listener = crate::rt::Listener::new(listener).map_err(|e| Error::Bind {
                id: spec.id.clone(),
                path: spec.socket.clone(),
                reason: "cannot register socket",
                source: e,
            })?;
            accept_tasks.push(accept::start(inner.clone(), index, listener));
        }
        if let (Some(listener), Some(slot)) = (qemu, &inner.qemu) {
            let listener = crate::rt::Listener::new(listener).map_err(|e| Error::Io {
                what: "cannot register QEMU's socket",
                path: Some(slot.socket.clone()),
                source: e,
            })?;
            accept_tasks.push(qemu::start(inner.clone(), listener));
        }
        Ok(Coordinator {
            inner,
            accept_tasks: Mutex::new(accept_tasks),
            bound: Mutex::new(bound),
        })
    }

    /// The helpers this coordinator expects.
    pub fn helpers(&self) -> impl Iterator<Item = &HelperSpec> {
        self.inner.slots.iter().map(|s| &s.spec)
    }

    /// Each helper's connection and last transfers.
    pub fn status(&self) -> Vec<HelperStatus> {
        self.inner
            .slots
            .iter()
            .map(|slot| {
                let state = slot.state();
                HelperStatus {
                    id: slot.spec.id.clone(),
                    socket: slot.spec.socket.clone(),
                    required: slot.spec.required,
                    connected: state.peer.is_some(),
                    pid: state.peer.as_ref().and_then(|p| p.pid),
                    uid: state.peer.as_ref().map(|p| p.uid),
                    last_save: state.last_save.clone(),
                    last_load: state.last_load.clone(),
                    last_rejection: state.last_rejection.clone(),
                }
            })
            .collect()
    }

    /// QEMU's front door: its socket, QEMU's connection and the last save
    /// and load QEMU made through it; `None` without
    /// [`Builder::qemu_socket`](super::Builder::qemu_socket).
    pub fn qemu_status(&self) -> Option<QemuStatus> {
        self.inner.qemu.as_ref().map(qemu::QemuSlot::status)
    }

    /// Waits until every required helper is connected.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] (or [`Error::Several`]) naming the helpers
    /// still missing after `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        self.inner.require(&self.inner.required(), timeout).await
    }

    /// Saves every connected helper into a native state stream written to
    /// `out`, and returns `out` with a report.
    ///
    /// Waits up to the connect timeout for every required helper, then
    /// saves all of them at once, each with the call timeout, and writes
    /// each state into the stream while it arrives. Optional helpers that
    /// are absent or fail are skipped and listed in the report.
    ///
    /// A helper that serves `org.dbusvmstate.Stream1` streams its state
    /// through a socket (`SaveFd`): the state is written into `out` chunk
    /// by chunk as the helper produces it, so coordinator memory stays flat
    /// (a few MiB per helper streaming at that moment) whatever the size.
    /// Other helpers are called with plain `Save`, whose reply (at most one
    /// D-Bus message) is held until it is written. An optional streaming
    /// helper's state is staged in an unlinked temporary file until it is
    /// complete, so that one failing midway can still be left out.
    ///
    /// # Errors
    ///
    /// Any required helper missing or failing fails the save, and no `Save`
    /// is called at all when one is missing. On error, `out` may hold a
    /// partial stream, which readers reject (it has no end record); use
    /// [`Coordinator::save_to_path`] to leave no file behind.
    pub async fn save<W>(&self, out: W) -> Result<(W, SaveReport), Error>
    where
        W: std::io::Write + Send + 'static,
    {
        self.save_with(out, &WriteOptions::default()).await
    }

    /// Saves as [`Coordinator::save`] does, into a stream encoded as
    /// `options` asks: compressed, encrypted or both (native format
    /// version 2), or version 1 with the default options.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::save`].
    pub async fn save_with<W>(
        &self,
        out: W,
        options: &WriteOptions,
    ) -> Result<(W, SaveReport), Error>
    where
        W: std::io::Write + Send + 'static,
    {
        let _running = self.exclusive("a save").await?;
        save::save(&self.inner, out, options).await
    }

    /// Saves into the file at `path`, atomically: the stream goes to a
    /// temporary file in the same directory, which is synced and renamed
    /// over `path` only when the save succeeded. A failed save leaves no
    /// new file and an existing file untouched. A path that exists and is
    /// not a regular file (a FIFO, `/dev/null`) is written into in place
    /// ([`OutputFile`](crate::atomic::OutputFile)).
    ///
    /// # Errors
    ///
    /// As [`Coordinator::save`], plus [`Error::Io`] for the file.
    pub async fn save_to_path(&self, path: impl AsRef<Path>) -> Result<SaveReport, Error> {
        self.save_to_path_with(path, &WriteOptions::default()).await
    }

    /// [`Coordinator::save_to_path`] with the encoding of `options` (see
    /// [`Coordinator::save_with`]).
    ///
    /// # Errors
    ///
    /// As [`Coordinator::save_to_path`].
    pub async fn save_to_path_with(
        &self,
        path: impl AsRef<Path>,
        options: &WriteOptions,
    ) -> Result<SaveReport, Error> {
        let _running = self.exclusive("a save").await?;
        save::save_to_path(&self.inner, path.as_ref(), options).await
    }

    /// Loads a state stream from `input` into the helpers.
    ///
    /// No helper completes a load from a stream that fails verification:
    /// its format, every checksum, every required helper present, no
    /// unknown or duplicate Id, every helper without the streaming
    /// extension within one D-Bus message. All helpers load at once.
    /// `format` `None` detects the format from the first bytes.
    ///
    /// `input` is read once. A native stream is loaded as it arrives
    /// when every connected streaming helper serves the sealed load: after
    /// waiting for the required helpers, each streaming helper is called
    /// as its state begins and receives it chunk by chunk, committed only
    /// once the whole stream has verified; plain helpers are called then.
    /// Otherwise the stream is verified while it is spooled (memory, then a
    /// temporary file), a stream that fails calls no `Load` at all, and
    /// then the spool is streamed to the helpers. See
    /// [Loading](crate::coordinator#loading).
    ///
    /// # Errors
    ///
    /// [`Error::Stream`], [`Error::MissingInStream`],
    /// [`Error::UnknownInStream`], [`Error::OverMessageLimit`]: the load
    /// fails and no helper completes its load (streaming helpers already
    /// called see their load aborted and keep their old state);
    /// [`Error::NotConnected`] when a required helper is absent, before
    /// any call; [`Error::Io`] when the input or the spool fails; call and
    /// transfer errors of required helpers.
    pub async fn load<R>(
        &self,
        input: R,
        format: Option<stream::Format>,
    ) -> Result<LoadReport, Error>
    where
        R: std::io::Read + Send + 'static,
    {
        self.load_with(input, format, &ReadOptions::default()).await
    }

    /// Loads as [`Coordinator::load`] does, with the key of `options` for
    /// an encrypted stream. A version 2 stream (compressed, encrypted) is
    /// decoded as it is read, each record authenticated before any of it
    /// goes on; with a key, an unencrypted stream is refused unless
    /// `options` allows it.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load`]; [`Error::Stream`] with
    /// [`stream::Error::KeyRequired`], [`stream::Error::WrongKey`],
    /// [`stream::Error::NotEncrypted`] before any call, and with
    /// [`stream::Error::Authentication`] for an altered stream, which
    /// completes no load.
    pub async fn load_with<R>(
        &self,
        input: R,
        format: Option<stream::Format>,
        options: &ReadOptions,
    ) -> Result<LoadReport, Error>
    where
        R: std::io::Read + Send + 'static,
    {
        let _running = self.exclusive("a load").await?;
        load::load(&self.inner, input, format, options).await
    }

    /// Loads a state stream from a seekable `input` (see
    /// [`Coordinator::load`]): a native stream is indexed from its current
    /// position (its record headers, seeking over the chunks' payloads),
    /// then read once, each state streaming to its helper as it is
    /// verified, with nothing spooled; no helper completes its load before
    /// the whole stream has verified. An input that turns out not to seek
    /// (a pipe behind a `File`) is loaded as [`Coordinator::load`] loads
    /// one.
    /// An input that changes during the load fails it.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load`], except that what only the verifying pass
    /// sees (a chunk's checksum, a state's checksum, `STREAM_END`) fails
    /// the load after the streaming helpers' `LoadFd` calls, which it
    /// aborts: each of those helpers keeps its old state.
    pub async fn load_seekable<R>(
        &self,
        input: R,
        format: Option<stream::Format>,
    ) -> Result<LoadReport, Error>
    where
        R: std::io::Read + std::io::Seek + Send + 'static,
    {
        self.load_seekable_with(input, format, &ReadOptions::default())
            .await
    }

    /// [`Coordinator::load_seekable`] with the key of `options` (see
    /// [`Coordinator::load_with`]). A version 2 stream, and any stream
    /// when a key is given, is read once as [`Coordinator::load_with`]
    /// reads it rather than indexed.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load_seekable`] and [`Coordinator::load_with`].
    pub async fn load_seekable_with<R>(
        &self,
        input: R,
        format: Option<stream::Format>,
        options: &ReadOptions,
    ) -> Result<LoadReport, Error>
    where
        R: std::io::Read + std::io::Seek + Send + 'static,
    {
        let _running = self.exclusive("a load").await?;
        load::load_seekable(&self.inner, input, format, options).await
    }

    /// Loads the state stream in the file at `path` (see
    /// [`Coordinator::load`] and [`Coordinator::load_seekable`]: a regular
    /// file is indexed and streamed, a FIFO read once).
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load`], plus [`Error::Io`] when the file cannot be
    /// opened.
    pub async fn load_from_path(
        &self,
        path: impl AsRef<Path>,
        format: Option<stream::Format>,
    ) -> Result<LoadReport, Error> {
        self.load_from_path_with(path, format, &ReadOptions::default())
            .await
    }

    /// [`Coordinator::load_from_path`] with the key of `options` (see
    /// [`Coordinator::load_with`]).
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load_from_path`] and [`Coordinator::load_with`].
    pub async fn load_from_path_with(
        &self,
        path: impl AsRef<Path>,
        format: Option<stream::Format>,
        options: &ReadOptions,
    ) -> Result<LoadReport, Error> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::Io {
            what: "cannot open state stream",
            path: Some(path.to_path_buf()),
            source: e,
        })?;
        // Unbuffered: the index seeks over every chunk, and the verifying
        // pass reads each payload straight into the stream reader's buffer.
        self.load_seekable_with(file, format, options).await
    }

    /// Waits for the right to run a save or load: one runs at a time,
    /// whether from this handle, the control socket or QEMU.
    async fn exclusive(&self, what: &'static str) -> Result<super::shared::Operation, Error> {
        let wait = self.inner.config.connect_timeout;
        Ok(self.inner.exclusive(what, wait).await?)
    }

    /// Stops accepting, closes every helper connection and removes the
    /// socket files.
    ///
    /// A save or load running meanwhile fails, as its helpers'
    /// connections close (see [the coordinator's
    /// docs](crate::coordinator#concurrency)). Shutting down again, or
    /// while another shutdown runs, does nothing and returns at once;
    /// dropping the coordinator afterwards is fine.
    pub async fn shutdown(&self) {
        for conn in self.stop() {
            conn.close_now().await;
        }
        // Dropping the guards removes the files.
        drop(std::mem::take(&mut *lock(&self.bound)));
    }

    /// Stops the accept tasks and takes every peer out; returns their
    /// connections for closing. Does nothing the second time.
    fn stop(&self) -> Vec<Arc<PeerConn>> {
        self.inner.stopping.store(true, Ordering::Release);
        for task in std::mem::take(&mut *lock(&self.accept_tasks)) {
            task.abort();
        }
        let peers: Vec<_> = self
            .inner
            .slots
            .iter()
            .filter_map(|slot| slot.state().peer.take())
            .map(|p| p.conn)
            .chain(self.inner.qemu.as_ref().and_then(qemu::QemuSlot::take))
            .collect();
        self.inner.notify();
        peers
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let peers = self.stop();
        if !peers.is_empty() {
            // Connections close asynchronously; the helpers see EOF.
            drop(crate::rt::spawn(async move {
                for conn in peers {
                    conn.close_now().await;
                }
            }));
        }
        // `bound` drops after this and removes the socket files.
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::coordinator::Builder;
    use crate::helper::{self, BoxError};
    use crate::rt;

    /// Every test's deadline, so that a hang fails instead of stalling.
    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    struct Tiny;

    impl helper::State for Tiny {
        fn id(&self) -> &str {
            "a"
        }
        fn save(&self) -> Result<Vec<u8>, BoxError> {
            Ok(vec![1, 2, 3])
        }
        fn load(&self, _data: Vec<u8>) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// A coordinator expecting helper "a" in a fresh directory, with that
    /// helper connected; returns the helper's task too, which ends when
    /// its connection closes.
    async fn connected(dir: &tempfile::TempDir) -> (Coordinator, PathBuf, rt::Task<()>) {
        let c = Builder::new()
            .socket_dir(dir.path(), ["a"])
            .bind()
            .expect("bind");
        let socket = dir.path().join("a.sock");
        assert!(socket.exists());
        let served = helper::serve(socket.clone(), Arc::new(Tiny), helper::Options::default());
        let task = rt::spawn(async move { served.await.expect("helper") });
        c.wait_connected(TEST_TIMEOUT)
            .await
            .expect("helper connects");
        (c, socket, task)
    }

    fn run(test: impl std::future::Future<Output = ()>) {
        rt::block_on(rt::timeout(TEST_TIMEOUT, test)).expect("test timed out");
    }

    #[test]
    fn shutting_down_twice_does_nothing_the_second_time() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (c, socket, helper) = connected(&dir).await;
            c.shutdown().await;
            assert!(!socket.exists(), "socket file left behind");
            assert!(!c.status()[0].connected);
            // The helper sees its connection close.
            helper.await;
            let again = Instant::now();
            c.shutdown().await;
            assert!(again.elapsed() < Duration::from_secs(1));
            drop(c);
        });
    }

    #[test]
    fn concurrent_shutdowns_both_return() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (c, socket, helper) = connected(&dir).await;
            futures::join!(c.shutdown(), c.shutdown());
            assert!(!socket.exists());
            helper.await;
        });
    }

    #[test]
    fn drop_after_shutdown_is_fine() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (c, socket, helper) = connected(&dir).await;
            c.shutdown().await;
            drop(c);
            assert!(!socket.exists());
            helper.await;
        });
    }

    #[test]
    fn drop_alone_still_cleans_up() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (c, socket, helper) = connected(&dir).await;
            drop(c);
            assert!(!socket.exists(), "socket file left behind");
            helper.await;
        });
    }

    #[test]
    fn a_save_after_shutdown_fails() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let c = Builder::new()
                .socket_dir(dir.path(), ["a"])
                .connect_timeout(Duration::from_millis(50))
                .bind()
                .expect("bind");
            c.shutdown().await;
            let err = c.save(Vec::new()).await.expect_err("saved after shutdown");
            assert!(matches!(err, Error::NotConnected { .. }), "{err}");
        });
    }
}
