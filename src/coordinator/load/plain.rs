//! A plain helper's state on its way to its one `Load` message, within
//! the coordinator's [memory budget](crate::coordinator::Builder::memory_limit).
//!
//! The verifying pass collects each plain state until the whole stream
//! has verified. A state whose room ([`room_for_load`]: the state and the
//! copies zbus makes of its `Load` message) fits in the budget beside the
//! others held is collected in memory; any other is written to an
//! unlinked temporary file ([`spill_dir`]) and read back only when its
//! `Load` can take its room, waiting for it. Either way the state is in
//! memory, and counted, only from its collection or its read-back until
//! its `Load` returned, and nothing that holds room waits for more.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::coordinator::budget::{Budget, Permit};
use crate::error::Error;
use crate::rt;

/// Where plain states beyond the budget are spilled: `$TMPDIR` when set,
/// else `/var/tmp`, which is on disk on the usual layouts, whereas `/tmp`
/// is often a tmpfs, whose pages would be memory again. The file is
/// unlinked at once, so nothing is left behind, whatever happens.
pub(crate) fn spill_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if std::path::Path::new("/var/tmp").is_dir() => PathBuf::from("/var/tmp"),
        _ => std::env::temp_dir(),
    }
}

/// Copies of a plain state in memory while its `Load` is under way: the
/// collected state and the two zbus serialises the message into.
const LOAD_COPIES: u64 = 3;

/// The room a plain state of `size` bytes takes for its `Load`:
/// [`LOAD_COPIES`] times its size, at most the whole budget (so that a
/// state that fits the budget at all can always go alone).
pub(crate) fn room_for_load(size: u64, budget: &Budget) -> u64 {
    size.saturating_mul(LOAD_COPIES).min(budget.limit())
}

fn spill_error(source: io::Error) -> Error {
    Error::Io {
        what: "cannot spill a plain helper's state to a temporary file",
        path: Some(spill_dir()),
        source,
    }
}

/// A plain state being collected.
#[derive(Debug)]
pub(crate) enum Collect {
    /// In memory, its room taken from the budget.
    Memory { data: Vec<u8>, permit: Permit },
    /// In an unlinked temporary file.
    Spilled { file: File, bytes: u64 },
}

impl Collect {
    /// Starts collecting a state of `size` bytes: in memory if its room is
    /// free now, else in a temporary file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the temporary file cannot be created.
    pub(crate) fn start(budget: &Arc<Budget>, size: u64) -> Result<Self, Error> {
        let fits = size <= budget.limit();
        match fits
            .then(|| budget.try_take(room_for_load(size, budget)))
            .flatten()
        {
            Some(permit) => {
                let data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                Ok(Collect::Memory { data, permit })
            }
            None => {
                let file = tempfile::tempfile_in(spill_dir()).map_err(spill_error)?;
                Ok(Collect::Spilled { file, bytes: 0 })
            }
        }
    }

    /// Starts collecting a state whose size is not known yet (read from a
    /// pipe): in memory while the room of what arrived is free, then in a
    /// temporary file.
    pub(crate) fn growing(budget: &Arc<Budget>) -> Self {
        Collect::Memory {
            data: Vec::new(),
            permit: budget
                .try_take(0)
                .unwrap_or_else(|| unreachable!("0 bytes always fit")),
        }
    }

    /// The bytes collected so far.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Collect::Memory { data, .. } => data.len() as u64,
            Collect::Spilled { bytes, .. } => *bytes,
        }
    }

    /// Appends the next bytes of the state. A state in memory that
    /// outgrows its room takes more if it is free, else moves to a
    /// temporary file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the temporary file cannot be created or written.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Collect::Memory { data: held, permit } = self {
            let len = held.len() as u64 + data.len() as u64;
            let room = room_for_load(len, permit.budget());
            let fits = len <= permit.budget().limit();
            if !fits || (room > permit.bytes() && !permit.try_grow(room)) {
                let mut file = tempfile::tempfile_in(spill_dir()).map_err(spill_error)?;
                file.write_all(held).map_err(spill_error)?;
                *self = Collect::Spilled {
                    file,
                    bytes: held.len() as u64,
                };
            }
        }
        match self {
            Collect::Memory { data: held, permit } => {
                // Grown by doubling, but never past the budget: the memory
                // held stays within the room counted.
                let len = held.len() + data.len();
                if len > held.capacity() {
                    let limit = usize::try_from(permit.budget().limit()).unwrap_or(usize::MAX);
                    let capacity = len
                        .max(held.capacity().saturating_mul(2))
                        .min(limit.max(len));
                    held.reserve_exact(capacity - held.len());
                }
                held.extend_from_slice(data);
            }
            Collect::Spilled { file, bytes } => {
                file.write_all(data).map_err(spill_error)?;
                *bytes += data.len() as u64;
            }
        }
        Ok(())
    }

    /// The whole state in memory, with the room it holds: a spilled one
    /// waits for its room, then is read back.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] naming helper `id` when the state can never fit
    /// in the budget; [`Error::Io`] when the file cannot be read back.
    pub(crate) async fn into_memory(
        self,
        budget: &Arc<Budget>,
        id: &str,
    ) -> Result<(Vec<u8>, Permit), Error> {
        match self {
            Collect::Memory { data, permit } => Ok((data, permit)),
            Collect::Spilled { mut file, bytes } => {
                if bytes > budget.limit() {
                    return Err(over_budget(id, bytes, budget));
                }
                let permit = budget
                    .take(room_for_load(bytes, budget))
                    .await
                    .ok_or_else(|| over_budget(id, bytes, budget))?;
                let data = rt::spawn_blocking(move || {
                    file.seek(SeekFrom::Start(0))?;
                    let mut data = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
                    file.read_to_end(&mut data)?;
                    Ok::<_, io::Error>(data)
                })
                .await
                .map_err(spill_error)?;
                Ok((data, permit))
            }
        }
    }
}

/// The error for a plain state of `size` bytes that can never fit in the
/// budget.
pub(crate) fn over_budget(id: &str, size: u64, budget: &Budget) -> Error {
    Error::TooLarge {
        id: id.to_string(),
        size,
        limit: budget.limit(),
        what: "the coordinator's memory limit for plain states",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_beyond_the_budget_are_spilled_and_read_back() {
        // Room for one Load of 8 bytes (24) and none of 5 (15) beside it.
        let budget = Budget::new(30);
        let mut a = Collect::start(&budget, 8).unwrap();
        let mut b = Collect::start(&budget, 5).unwrap();
        assert!(matches!(a, Collect::Memory { .. }));
        assert!(matches!(b, Collect::Spilled { .. }));
        a.push(b"12345678").unwrap();
        b.push(b"abc").unwrap();
        b.push(b"de").unwrap();
        let (a, held) = futures::executor::block_on(a.into_memory(&budget, "a")).unwrap();
        assert_eq!((a.as_slice(), held.bytes()), (&b"12345678"[..], 24));
        // b's room is free only once a's is given back.
        drop(held);
        let (b, held) = futures::executor::block_on(b.into_memory(&budget, "b")).unwrap();
        assert_eq!((b.as_slice(), held.bytes()), (&b"abcde"[..], 15));
    }

    #[test]
    fn a_state_that_fits_alone_takes_the_whole_budget() {
        let budget = Budget::new(10);
        assert_eq!(room_for_load(4, &budget), 10);
        let c = Collect::start(&budget, 4).unwrap();
        assert!(matches!(c, Collect::Memory { .. }));
    }

    #[test]
    fn a_growing_state_moves_to_a_file_when_its_room_runs_out() {
        // 20 bytes free: room for a Load of 6 bytes (18), not of 7 (21).
        let budget = Budget::new(30);
        let other = budget.try_take(10).unwrap();
        let mut c = Collect::growing(&budget);
        c.push(b"123").unwrap();
        c.push(b"456").unwrap();
        assert!(matches!(c, Collect::Memory { .. }));
        c.push(b"7").unwrap();
        assert!(matches!(c, Collect::Spilled { .. }));
        assert_eq!(c.len(), 7);
        // Its room was given back when it moved.
        assert!(budget.try_take(20).is_some());
        drop(other);
    }

    #[test]
    fn a_state_larger_than_the_budget_is_named() {
        let budget = Budget::new(4);
        let mut c = Collect::start(&budget, 5).unwrap();
        c.push(b"12345").unwrap();
        let err = futures::executor::block_on(c.into_memory(&budget, "big")).unwrap_err();
        assert_eq!(err.helper_id(), Some("big"), "{err}");
    }
}
