//! Load: read and verify the whole stream, then call every helper's `Load`
//! at once.

use std::io::Read;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::{policy, HelperReport, Inner, Skipped, Transfer};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;
use crate::stream::{self, native, qemu, Format, Limits, Record};

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// The stream's format.
    pub format: Format,
    /// The helpers loaded, in configuration order.
    pub helpers: Vec<HelperReport>,
    /// Optional helpers left out.
    pub skipped: Vec<Skipped>,
    /// From the first `Load` call to the last reply.
    pub duration: Duration,
}

/// Reads and verifies a whole stream of either format.
///
/// # Errors
///
/// [`Error::Stream`] when it is malformed or fails verification,
/// [`Error::Io`] when reading fails.
pub(crate) fn read_records<R: Read>(
    mut input: R,
    format: Option<Format>,
    limits: Limits,
) -> Result<(Format, Vec<Record>), Error> {
    let mut prefix = Vec::with_capacity(native::MAGIC.len());
    (&mut input)
        .take(native::MAGIC.len() as u64)
        .read_to_end(&mut prefix)
        .map_err(|source| Error::Io {
            what: "cannot read the state stream",
            path: None,
            source,
        })?;
    let format = match format {
        Some(f) => f,
        None => Format::detect(&prefix).ok_or(Error::Stream(stream::Error::BadMagic))?,
    };
    let input = std::io::Cursor::new(prefix).chain(input);
    let records = match format {
        Format::Native => native::read_all(input, limits),
        Format::Qemu => qemu::read(input, limits).map(|decoded| {
            if decoded.trailing_bytes > 0 {
                tracing::debug!(
                    bytes = decoded.trailing_bytes,
                    "ignored trailing bytes after the QEMU payload's entries"
                );
            }
            decoded.records
        }),
    }
    .map_err(|e| match e {
        stream::Error::Io(source) => Error::Io {
            what: "cannot read the state stream",
            path: None,
            source,
        },
        other => Error::Stream(other),
    })?;
    Ok((format, records))
}

pub(super) async fn load<R>(
    inner: &Inner,
    input: R,
    format: Option<Format>,
) -> Result<LoadReport, Error>
where
    R: Read + Send + 'static,
{
    let config = &inner.config;
    let limits = Limits {
        max_blob_bytes: config.max_blob_bytes,
        max_helpers: Limits::default().max_helpers,
    };
    let (format, records) = rt::spawn_blocking(move || read_records(input, format, limits)).await?;
    let specs: Vec<_> = inner.slots.iter().map(|s| s.spec.clone()).collect();
    let plan = policy::plan_load(&specs, &records)?;

    for &(hi, ri) in &plan.targets {
        let size = records[ri].data.len();
        if size > iface::MAX_LOAD_BLOB_BYTES {
            return Err(Error::TooLarge {
                id: specs[hi].id.clone(),
                size: size as u64,
                limit: iface::MAX_LOAD_BLOB_BYTES as u64,
                what: "one D-Bus message",
            });
        }
    }

    let required: Vec<usize> = plan
        .targets
        .iter()
        .map(|&(hi, _)| hi)
        .filter(|&hi| specs[hi].required)
        .collect();
    let missing = inner
        .wait_connected(&required, config.connect_timeout)
        .await;
    if let Some(e) = Error::from_many(inner.not_connected(&missing, config.connect_timeout)) {
        return Err(e);
    }

    let mut skipped: Vec<Skipped> = plan
        .absent_optional
        .iter()
        .map(|&hi| Skipped {
            id: specs[hi].id.clone(),
            reason: "no state in the stream".to_string(),
        })
        .collect();
    let mut targets = Vec::new();
    for &(hi, ri) in &plan.targets {
        match inner.slots[hi].peer() {
            Some(peer) => targets.push((hi, ri, peer)),
            None => skipped.push(Skipped {
                id: specs[hi].id.clone(),
                reason: "not connected".to_string(),
            }),
        }
    }
    for s in &skipped {
        tracing::warn!(helper = %s.id, "optional helper skipped: {}", s.reason);
    }

    let started = Instant::now();
    let (specs, records) = (&specs, &records);
    let results = join_all(targets.iter().map(|(hi, ri, peer)| async move {
        let id = &specs[*hi].id;
        let data = &records[*ri].data;
        let call_started = Instant::now();
        let result = match rt::timeout(
            config.call_timeout,
            iface::call_load_at(&peer.conn, peer.destination(), data),
        )
        .await
        {
            Ok(Ok(())) => Ok(Transfer {
                bytes: data.len() as u64,
                duration: call_started.elapsed(),
            }),
            Ok(Err(source)) => Err(Error::Call {
                id: id.clone(),
                call: Call::Load,
                source: Box::new(source),
            }),
            Err(rt::Elapsed) => Err(Error::Timeout {
                id: id.clone(),
                call: Call::Load,
                timeout: config.call_timeout,
            }),
        };
        (*hi, result)
    }))
    .await;

    let mut helpers = Vec::new();
    let mut errors = Vec::new();
    for (hi, result) in results {
        let slot = &inner.slots[hi];
        match result {
            Ok(transfer) => {
                slot.state().last_load = Some(transfer.clone());
                helpers.push(HelperReport {
                    id: slot.spec.id.clone(),
                    transfer,
                });
            }
            Err(e) if slot.spec.required => errors.push(e),
            Err(e) => {
                tracing::warn!(helper = %slot.spec.id, "optional helper failed to load: {}", crate::error::chain(&e));
                skipped.push(Skipped {
                    id: slot.spec.id.clone(),
                    reason: crate::error::chain(&e),
                });
            }
        }
    }
    if let Some(e) = Error::from_many(errors) {
        return Err(e);
    }
    Ok(LoadReport {
        format,
        helpers,
        skipped,
        duration: started.elapsed(),
    })
}
