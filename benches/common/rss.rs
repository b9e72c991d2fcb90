//! Coordinator peak memory, measured in a child process of its own so the
//! bench's other allocations do not count: `VmHWM` before and after one
//! save (or load) of one helper's state.

use std::io::{BufReader, BufWriter};
use std::process::{Command, Stdio};

use super::rt;
use dbus_vmstate::helper::BoxError;
use dbus_vmstate::stream::native;

use super::{arg, peak_rss_kib, state_bytes, Coordinated, MIB, ROLE};

/// One measurement.
pub struct Peak {
    pub what: String,
    pub size: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

/// `rss stream-save|plain-save|stream-load SIZE`, in the child: prints one
/// line `WHAT SIZE BEFORE_KIB AFTER_KIB`.
pub fn role(args: &[String]) -> Result<(), BoxError> {
    let what = arg(args, 0)?;
    let size: usize = arg(args, 1)?.parse()?;
    let streaming = what.starts_with("stream");
    let c = Coordinated::start(1, size, streaming);
    let (before, after) = if what.ends_with("save") {
        let before = peak_rss_kib()?;
        let (_, report) = rt::block_on(c.coordinator.save(std::io::sink()))?;
        assert_eq!(report.helpers[0].transfer.bytes, size as u64);
        (before, peak_rss_kib()?)
    } else {
        let file = tempfile::NamedTempFile::new_in("/var/tmp")?;
        {
            let mut w = native::Writer::new(BufWriter::new(file.as_file()))?;
            let h = w.begin(&c.ids[0])?;
            let block = state_bytes(MIB);
            for _ in 0..size / MIB {
                w.write_chunk(h, &block)?;
            }
            w.end(h)?;
            w.finish()?;
        }
        let before = peak_rss_kib()?;
        let input = BufReader::with_capacity(MIB, file.reopen()?);
        let report = rt::block_on(c.coordinator.load_seekable(input, None))?;
        assert_eq!(report.helpers[0].transfer.bytes, size as u64);
        (before, peak_rss_kib()?)
    };
    println!("{what} {size} {before} {after}");
    Ok(())
}

/// Runs one measurement in a child.
pub fn measure(what: &str, size: usize) -> Option<Peak> {
    let out = Command::new(std::env::current_exe().ok()?)
        .env(ROLE, "rss")
        .args([what, &size.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields[..] {
        [w, s, b, a] => Some(Peak {
            what: w.to_string(),
            size: s.parse().ok()?,
            before_kib: b.parse().ok()?,
            after_kib: a.parse().ok()?,
        }),
        _ => None,
    }
}
