//! The runtime edge: the only module that names the async runtime.
//!
//! Crate-private: the library's public futures run under any executor
//! (tokio, smol, `futures::executor`), because what they need from a
//! runtime comes from here, and everything here brings its own threads:
//! async-std's global executor and blocking pool, and async-io's reactor
//! and timers. zbus brings its own reactor thread for D-Bus I/O.
//!
//! Everything else in the crate is written against [`futures`] and these few
//! functions, so moving from async-std to another executor (smol, say) is a
//! change to this file alone: blocking on a future, spawning tasks, running
//! blocking work off the async threads, timers, and accepting on a Unix
//! listener.

use std::future::Future;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Runs a future to completion on the current thread.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    async_std::task::block_on(future)
}

/// A spawned task. Awaiting it yields the task's output; dropping it lets
/// the task run on detached; [`Task::cancel`] stops it.
#[derive(Debug)]
#[must_use = "dropping a Task detaches it; call cancel() to stop it"]
pub(crate) struct Task<T>(async_std::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    /// Stops the task at its next await point and waits until it is gone.
    pub(crate) async fn cancel(self) {
        let _ = self.0.cancel().await;
    }
}

impl<T> Future for Task<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Spawns a future on the shared executor.
pub(crate) fn spawn<F, T>(future: F) -> Task<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    Task(async_std::task::spawn(future))
}

/// Runs blocking or CPU-heavy work on a thread pool and awaits its result.
pub(crate) async fn spawn_blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    async_std::task::spawn_blocking(f).await
}

/// The deadline of [`timeout`] passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Awaits `future`, giving up after `duration`.
///
/// # Errors
///
/// [`Elapsed`] when the duration passed first; the future is dropped.
pub(crate) async fn timeout<F: Future>(
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    async_std::future::timeout(duration, future)
        .await
        .map_err(|_| Elapsed)
}

/// Sleeps for `duration` without blocking a thread.
pub(crate) async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}

/// Waits until `stream` (a blocking-mode socket) has something to read or
/// its peer closed; the stream is left in blocking mode.
///
/// # Errors
///
/// When the socket cannot be watched.
pub(crate) async fn readable(stream: &UnixStream) -> io::Result<()> {
    // The duplicate shares the file description, whose O_NONBLOCK the
    // reactor sets: it is cleared again below.
    let watched = async_io::Async::new(stream.try_clone()?)?;
    let ready = watched.readable().await;
    drop(watched);
    stream.set_nonblocking(false)?;
    ready
}

/// A listening Unix socket whose `accept` can be awaited.
#[derive(Debug)]
pub(crate) struct Listener(async_io::Async<UnixListener>);

impl Listener {
    /// Registers a bound, listening socket with the reactor (it is switched
    /// to non-blocking mode).
    ///
    /// # Errors
    ///
    /// When the socket cannot be registered.
    pub(crate) fn new(listener: UnixListener) -> io::Result<Self> {
        async_io::Async::new(listener).map(Listener)
    }

    /// Accepts one connection, returned as a blocking-mode std stream ready to
    /// hand to zbus.
    ///
    /// # Errors
    ///
    /// The `accept(2)` error, e.g. `EMFILE` when out of file descriptors.
    pub(crate) async fn accept(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.0.read_with(|l| l.accept()).await?;
        Ok(stream)
    }
}
