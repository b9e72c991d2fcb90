//! The save and load a control call runs: the passed descriptor wrapped,
//! the coordinator called, the result turned into a report or a named
//! error.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::error::Reply;
use super::fdio::{CutOff, CutOffOnDrop, Passed};
use super::Report;
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::rt;
use crate::stream::native::{ReadOptions, WriteOptions};
use crate::stream::{self, qemu, Format, Limits};

fn failed(e: Error) -> Reply {
    Reply::from_coordinator(&e)
}

pub(super) async fn save(
    coordinator: Arc<Coordinator>,
    fd: OwnedFd,
    format: Format,
    encoding: WriteOptions,
    connect_timeout: Option<Duration>,
) -> Result<Report, Reply> {
    if format == Format::Qemu && encoding.features() != Default::default() {
        return Err(Reply::invalid_args(
            "compress and key_fd are for the native format: a QEMU payload is neither compressed nor encrypted"
                .to_string(),
        ));
    }
    if let Some(timeout) = connect_timeout {
        coordinator.wait_connected(timeout).await.map_err(failed)?;
    }
    let cut_off = CutOff::default();
    let out = Passed::new(fd, cut_off.clone());
    CutOffOnDrop::new(cut_off, async move {
        match format {
            Format::Native => {
                let (out, report) = coordinator
                    .save_with(out, &encoding)
                    .await
                    .map_err(failed)?;
                Ok(Report {
                    format,
                    stream_bytes: Some(out.bytes_written()),
                    helpers: report.helpers,
                    skipped: report.skipped,
                    duration: report.duration,
                })
            }
            Format::Qemu => {
                let (native, report) = coordinator.save(Vec::new()).await.map_err(failed)?;
                let stream_bytes = rt::spawn_blocking(move || write_qemu(&native, out)).await?;
                Ok(Report {
                    format,
                    stream_bytes: Some(stream_bytes),
                    helpers: report.helpers,
                    skipped: report.skipped,
                    duration: report.duration,
                })
            }
        }
    })
    .await
}

/// Re-encodes a native stream as a QEMU payload into `out`; returns its
/// size.
fn write_qemu(native: &[u8], out: Passed) -> Result<u64, Reply> {
    let records = stream::native::read_all(native, Limits::default())
        .map_err(|e| Reply::helper_failed(crate::error::chain(&e)))?;
    qemu::check_for_qemu(&records).map_err(|e| {
        Reply::helper_failed(format!(
            "cannot write a QEMU payload: {}",
            crate::error::chain(&e)
        ))
    })?;
    let mut out = out;
    qemu::write(io::BufWriter::new(&mut out), &records).map_err(|e| {
        Reply::io(format!(
            "cannot write the state stream: {}",
            crate::error::chain(&e)
        ))
    })?;
    Ok(out.bytes_written())
}

pub(super) async fn load(
    coordinator: Arc<Coordinator>,
    fd: OwnedFd,
    format: Option<Format>,
    decoding: ReadOptions,
    connect_timeout: Option<Duration>,
) -> Result<Report, Reply> {
    if let Some(timeout) = connect_timeout {
        coordinator.wait_connected(timeout).await.map_err(failed)?;
    }
    let cut_off = CutOff::default();
    // Unbuffered: a regular file is indexed and streamed in one pass, a
    // pipe loaded as it arrives (see the coordinator's docs on loading).
    let input = Passed::new(fd, cut_off.clone());
    CutOffOnDrop::new(cut_off, async move {
        let report = coordinator
            .load_seekable_with(input, format, &decoding)
            .await
            .map_err(failed)?;
        Ok(Report {
            format: report.format,
            stream_bytes: None,
            helpers: report.helpers,
            skipped: report.skipped,
            duration: report.duration,
        })
    })
    .await
}
