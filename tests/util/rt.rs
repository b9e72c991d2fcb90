//! The tests' own runtime: the few executor calls the tests make, on
//! async-std. The library's runtime is its own business (crate-private);
//! its futures run under any executor, and `library::executors` proves it
//! for two others.

use std::future::Future;
use std::time::Duration;

/// A spawned task; awaiting it yields its output, dropping it detaches it.
pub type Task<T> = async_std::task::JoinHandle<T>;

/// Runs `future` to completion on the current thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    async_std::task::block_on(future)
}

/// Spawns `future` on the shared executor.
pub fn spawn<F, T>(future: F) -> Task<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    async_std::task::spawn(future)
}

/// Runs blocking work on a thread pool and awaits its result.
pub async fn spawn_blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    async_std::task::spawn_blocking(f).await
}

/// The deadline of [`timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Awaits `future`, giving up (and dropping it) after `duration`.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    async_std::future::timeout(duration, future)
        .await
        .map_err(|_| Elapsed)
}

/// Sleeps without blocking a thread.
pub async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}
