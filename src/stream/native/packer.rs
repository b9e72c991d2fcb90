//! Chunk compression on worker threads, for [`Writer`](super::Writer).
//!
//! zstd at level 1 compresses text state at a fraction of the speed the
//! rest of a save runs at, so a writer that compresses hands its chunks to
//! one worker per core. Jobs go to the workers in turn and each worker
//! answers its jobs in the order it got them, so the writer takes the
//! results back in the order it submitted them by asking the workers in
//! the same turn. The workers keep no state between chunks: the stream is
//! the same byte for byte whatever the number of workers.
//!
//! Memory is bounded: at most [`Packer::limit`] jobs are out at once, each
//! holding one chunk and room for its compressed form, and their buffers
//! are reused.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use super::v2::Compressor;
use crate::stream::Error;

/// At most this many workers, however many cores there are.
pub const MAX_THREADS: usize = 8;

/// Jobs out per worker: one being compressed and one waiting, so a worker
/// never idles while the writer writes.
const JOBS_PER_THREAD: usize = 2;

/// The number of workers for `asked` (0: one per core).
pub fn threads(asked: usize) -> usize {
    let asked = if asked == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        asked
    };
    asked.clamp(1, MAX_THREADS)
}

/// One chunk to compress, and then its result.
#[derive(Debug, Default)]
pub struct Job {
    /// The chunk as it came.
    pub data: Vec<u8>,
    /// Its compressed payload is `out[..n]` when `packed` is `Some(n)`.
    pub out: Vec<u8>,
    /// Set by the worker: `None` stores the chunk raw.
    pub packed: Option<usize>,
}

struct Worker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Job>,
    thread: Option<JoinHandle<()>>,
}

/// The workers and the buffers of their jobs.
pub struct Packer {
    workers: Vec<Worker>,
    /// The worker of the next job.
    next: usize,
    /// Jobs out, in the order submitted: their workers.
    out: std::collections::VecDeque<usize>,
    spare: Vec<Job>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("workers", &self.workers.len())
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Packer {
    /// Starts `threads` workers (at least 1), each with its own
    /// compressor.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when zstd cannot make a context or a thread cannot
    /// start.
    pub fn new(threads: usize) -> Result<Packer, Error> {
        let mut workers = Vec::with_capacity(threads.max(1));
        for n in 0..threads.max(1) {
            let mut compressor = Compressor::new()?;
            let (jobs, inbox) = mpsc::channel::<Job>();
            let (outbox, done) = mpsc::channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("vmstate-zstd-{n}"))
                .spawn(move || {
                    for mut job in inbox {
                        job.packed = compressor.compress(&job.data, &mut job.out);
                        if outbox.send(job).is_err() {
                            break;
                        }
                    }
                })?;
            workers.push(Worker {
                jobs: Some(jobs),
                done,
                thread: Some(thread),
            });
        }
        Ok(Packer {
            workers,
            next: 0,
            out: std::collections::VecDeque::new(),
            spare: Vec::new(),
        })
    }

    /// How many jobs may be out at once.
    pub fn limit(&self) -> usize {
        self.workers.len() * JOBS_PER_THREAD
    }

    /// Jobs submitted and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.out.len()
    }

    /// Hands a copy of `chunk` to the next worker. The caller keeps
    /// [`in_flight`](Self::in_flight) below [`limit`](Self::limit).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the worker is gone.
    pub fn submit(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let mut job = self.spare.pop().unwrap_or_default();
        job.data.clear();
        job.data.extend_from_slice(chunk);
        job.packed = None;
        let worker = self.next;
        self.next = (self.next + 1) % self.workers.len();
        let sent = self.workers[worker]
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            return Err(gone());
        }
        self.out.push_back(worker);
        Ok(())
    }

    /// The oldest job out, once done; `Ok(None)` when it is not done yet
    /// (or no job is out) and `wait` is false.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when its worker stopped without answering.
    pub fn take(&mut self, wait: bool) -> Result<Option<Job>, Error> {
        let Some(&worker) = self.out.front() else {
            return Ok(None);
        };
        let done = &self.workers[worker].done;
        let job = if wait {
            done.recv().map_err(|_| gone())?
        } else {
            match done.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(gone()),
            }
        };
        self.out.pop_front();
        Ok(Some(job))
    }

    /// Gives a taken job's buffers back for the next one.
    pub fn recycle(&mut self, job: Job) {
        self.spare.push(job);
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.jobs = None;
        }
        for w in &mut self.workers {
            if let Some(thread) = w.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn gone() -> Error {
    Error::Io(std::io::Error::other("a compression thread stopped"))
}
