//! `dbus-vmstate demo`: the whole save/restore path, end to end, with
//! helper processes holding pseudo-random state.
//!
//! Source helpers serve generated state; a source coordinator saves it to a
//! stream file; fresh destination helpers start empty, a destination
//! coordinator loads the file into them, and each destination helper checks
//! every byte against the same generator and reports through its exit code.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use dbus_vmstate::coordinator::{self, HelperReport, LoadReport, SaveReport};
use dbus_vmstate::helper::{self, BoxError, SharedBytes, State};
use dbus_vmstate::stream::native::{self, Summary};
use dbus_vmstate::stream::Limits;
use futures::executor::block_on;

use crate::cli::{DemoArgs, DemoHelperArgs};
use crate::exit;
use crate::output::{self, Stdout};

/// Destination helper exit codes.
const EXIT_VERIFIED: u8 = 0;
const EXIT_MISMATCH: u8 = 3;
const EXIT_NEVER_LOADED: u8 = 4;

/// Bytes generated and compared per step when verifying.
const VERIFY_BLOCK_BYTES: usize = 1 << 20;

/// Fills `buf` with the pseudo-random pattern of `seed`, as it stands at
/// byte `offset` of the whole state (`offset` is a multiple of 8).
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    debug_assert_eq!(offset % 8, 0);
    let mut word = offset / 8;
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&mix(seed, word).to_le_bytes());
        word += 1;
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&mix(seed, word).to_le_bytes()[..n]);
}

/// splitmix64 of the word counter: each 8-byte word is independent, so any
/// block can be generated on its own.
fn mix(seed: u64, word: u64) -> u64 {
    let mut z = seed.wrapping_add(word.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether `data` is exactly the pattern of `seed` and `size`.
fn verify(seed: u64, size: u64, data: &[u8]) -> bool {
    if data.len() as u64 != size {
        return false;
    }
    let mut expected = vec![0u8; VERIFY_BLOCK_BYTES.min(data.len())];
    let mut offset = 0u64;
    for block in data.chunks(VERIFY_BLOCK_BYTES) {
        let want = &mut expected[..block.len()];
        fill(seed, offset, want);
        if block != want {
            return false;
        }
        offset += block.len() as u64;
    }
    true
}

/// A demo helper's state: generated on the source, checked on arrival on
/// the destination.
///
/// The state is held in an `Arc`, so that saving it copies nothing: the
/// streaming path writes it from where it lies into the coordinator's
/// socket, and the plain path shares it with the D-Bus reply.
struct DemoState {
    id: String,
    seed: u64,
    size: u64,
    data: Mutex<Arc<Vec<u8>>>,
    /// 0: nothing loaded yet; 1: loaded and verified; 2: mismatch.
    verdict: AtomicU8,
}

impl DemoState {
    fn current(&self) -> Result<Arc<Vec<u8>>, BoxError> {
        Ok(self.data.lock().map_err(|_| "state lock poisoned")?.clone())
    }
}

impl State for DemoState {
    fn id(&self) -> &str {
        &self.id
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.current()?.to_vec())
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        out.write_all(&self.current()?)?;
        Ok(())
    }

    fn save_shared(&self) -> Result<SharedBytes, BoxError> {
        Ok(self.current()?)
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        // The expected size is known here, so the buffer is allocated once.
        let mut data = Vec::with_capacity(usize::try_from(self.size)?);
        input.read_to_end(&mut data)?;
        self.load(data)
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        let ok = verify(self.seed, self.size, &data);
        self.verdict.store(if ok { 1 } else { 2 }, Ordering::SeqCst);
        *self.data.lock().map_err(|_| "state lock poisoned")? = Arc::new(data);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{}: loaded state differs from what the source held",
                self.id
            )
            .into())
        }
    }
}

/// The hidden `demo-helper` subcommand. Returns the process exit code.
pub fn run_helper(args: DemoHelperArgs) -> anyhow::Result<u8> {
    let size = usize::try_from(args.size).context("size does not fit in memory")?;
    let data = if args.destination {
        Vec::new()
    } else {
        let mut data = vec![0u8; size];
        fill(args.seed, 0, &mut data);
        data
    };
    let state = Arc::new(DemoState {
        id: args.id,
        seed: args.seed,
        size: args.size,
        data: Mutex::new(Arc::new(data)),
        verdict: AtomicU8::new(0),
    });
    helper::serve_blocking(
        &args.socket,
        state.clone(),
        helper::Options::default().streaming(!args.plain),
    )?;
    Ok(if !args.destination {
        EXIT_VERIFIED
    } else {
        match state.verdict.load(Ordering::SeqCst) {
            1 => EXIT_VERIFIED,
            2 => EXIT_MISMATCH,
            _ => EXIT_NEVER_LOADED,
        }
    })
}

/// Child processes that are killed if the demo stops early.
struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(
        dir: &Path,
        args: &DemoArgs,
        ids: &[String],
        destination: bool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let mut children = Children(Vec::new());
        for (i, id) in ids.iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.arg("demo-helper")
                .arg("--socket")
                .arg(dir.join(format!("{id}.sock")))
                .arg("--id")
                .arg(id)
                .arg("--size")
                .arg(args.size.to_string())
                .arg("--seed")
                .arg(seed_of(i).to_string());
            if destination {
                cmd.arg("--destination");
            }
            if args.plain {
                cmd.arg("--plain");
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start helper process {id}"))?;
            children.0.push((id.clone(), child));
        }
        Ok(children)
    }

    /// Waits for every child; returns each one's exit status.
    fn wait(mut self) -> anyhow::Result<Vec<(String, ExitStatus)>> {
        let mut out = Vec::new();
        for (id, mut child) in std::mem::take(&mut self.0) {
            let status = child
                .wait()
                .with_context(|| format!("waiting for helper process {id}"))?;
            out.push((id, status));
        }
        Ok(out)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn seed_of(index: usize) -> u64 {
    0x5eed_0000 + index as u64
}

/// Runs the demo and prints its table. Returns the process exit code.
pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let (_temp, dir) = work_dir(&args)?;
    let src_dir = dir.join("src");
    let dst_dir = dir.join("dst");
    for d in [&src_dir, &dst_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let stream_path = dir.join("helpers.vmstate");
    let ids: Vec<String> = (1..=args.helpers).map(|i| format!("helper-{i}")).collect();
    let mut out = Stdout::new();
    writeln!(
        out,
        "dbus-vmstate demo: {}, {} bytes of state each",
        output::count(args.helpers, "helper process", "helper processes"),
        args.size
    )?;
    out.flush()?;
    let (save, summary) = save_source(&src_dir, &args, &ids, &stream_path)?;
    let (load, statuses) = load_destination(&dst_dir, &args, &ids, &stream_path)?;
    print_table(&mut out, &ids, &save.helpers, &load.helpers)?;
    writeln!(
        out,
        "stream: {} ({} bytes, {}, checksums verified); save {:.1} ms, load {:.1} ms (after {:.1} ms verifying)",
        stream_path.display(),
        summary.stream_bytes,
        output::count(summary.helpers.len() as u64, "record", "records"),
        ms(save.duration),
        ms(load.duration),
        ms(load.verification),
    )?;
    out.flush()?;
    let failed = statuses.iter().filter(|(id, s)| !verified(id, s)).count();
    if failed > 0 {
        writeln!(
            out,
            "FAILED: {failed} of {} did not verify",
            output::count(ids.len() as u64, "helper", "helpers")
        )?;
        return Ok(exit::MIGRATION_FAILED);
    }
    writeln!(
        out,
        "verified: {} exactly the source's {} bytes",
        match ids.len() {
            1 => "the helper holds".to_string(),
            n => format!("all {n} helpers hold"),
        },
        args.size
    )?;
    Ok(exit::OK)
}

/// The work directory: `--dir`, created if missing, or a new temporary
/// directory, removed when the returned guard is dropped.
fn work_dir(args: &DemoArgs) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    if let Some(d) = &args.dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        return Ok((None, d.clone()));
    }
    let temp = tempfile::Builder::new()
        .prefix("dbus-vmstate-demo-")
        .tempdir_in(std::env::temp_dir())
        .context("cannot create a temporary directory")?;
    let dir = temp.path().to_path_buf();
    Ok((Some(temp), dir))
}

/// Starts helpers with generated state in `dir` and saves them into
/// `stream_path`; returns the report and the verified stream's summary.
fn save_source(
    dir: &Path,
    args: &DemoArgs,
    ids: &[String],
    stream_path: &Path,
) -> anyhow::Result<(SaveReport, Summary)> {
    let source = coordinator::Builder::new()
        .socket_dir(dir, ids.iter().cloned())
        .call_timeout(args.timeout)
        .bind()?;
    let children = Children::spawn(dir, args, ids, false)?;
    let save = block_on(source.save_to_path(stream_path));
    block_on(source.shutdown());
    let save = save.context("save failed")?;
    for (id, status) in children.wait()? {
        if !status.success() {
            bail!("source helper {id} exited with {status}");
        }
    }
    let summary = native::inspect(
        std::io::BufReader::new(std::fs::File::open(stream_path)?),
        Limits::default(),
    )
    .context("the saved stream does not verify")?;
    Ok((save, summary))
}

/// Starts empty helpers in `dir` and loads `stream_path` into them;
/// returns the report and each helper's exit status.
fn load_destination(
    dir: &Path,
    args: &DemoArgs,
    ids: &[String],
    stream_path: &Path,
) -> anyhow::Result<(LoadReport, Vec<(String, ExitStatus)>)> {
    let destination = coordinator::Builder::new()
        .socket_dir(dir, ids.iter().cloned())
        .call_timeout(args.timeout)
        .bind()?;
    let children = Children::spawn(dir, args, ids, true)?;
    let load = block_on(destination.load_from_path(stream_path, None));
    block_on(destination.shutdown());
    let statuses = children.wait()?;
    let load = load.context("load failed")?;
    Ok((load, statuses))
}

/// Whether destination helper `id` verified its state; says why not on
/// stderr.
fn verified(id: &str, status: &ExitStatus) -> bool {
    let code = status.code().and_then(|c| u8::try_from(c).ok());
    let why = match code {
        Some(EXIT_VERIFIED) => return true,
        Some(EXIT_MISMATCH) => "loaded state differs from the source's".to_string(),
        Some(EXIT_NEVER_LOADED) => "never received Load".to_string(),
        _ => format!("exited with {status}"),
    };
    let _ = writeln!(std::io::stderr(), "error: helper {id}: {why}");
    false
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mbps(bytes: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        return "-".to_string();
    }
    format!("{:.0}", bytes as f64 / s / 1e6)
}

fn print_table(
    out: &mut dyn Write,
    ids: &[String],
    saved: &[HelperReport],
    loaded: &[HelperReport],
) -> std::io::Result<()> {
    let find = |list: &[HelperReport], id: &str| list.iter().find(|r| r.id == id).cloned();
    writeln!(
        out,
        "{:<12} {:>12} {:>13} {:>10} {:>10} {:>10} {:>10}",
        "helper", "bytes", "path", "save ms", "load ms", "save MB/s", "load MB/s"
    )?;
    for id in ids {
        let (Some(s), Some(l)) = (find(saved, id), find(loaded, id)) else {
            writeln!(out, "{id:<12} {:>12}", "(missing)")?;
            continue;
        };
        let path = if s.mode == l.mode {
            s.mode.to_string()
        } else {
            format!("{}/{}", s.mode, l.mode)
        };
        let (s, l) = (s.transfer, l.transfer);
        writeln!(
            out,
            "{:<12} {:>12} {:>13} {:>10.2} {:>10.2} {:>10} {:>10}",
            id,
            s.bytes,
            path,
            ms(s.duration),
            ms(l.duration),
            mbps(s.bytes, s.duration),
            mbps(l.bytes, l.duration),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_position_independent() {
        let mut whole = vec![0u8; 10_000];
        fill(7, 0, &mut whole);
        let mut part = vec![0u8; 1000];
        fill(7, 4000, &mut part);
        assert_eq!(&whole[4000..5000], &part[..]);
        assert!(verify(7, 10_000, &whole));
        whole[9999] ^= 1;
        assert!(!verify(7, 10_000, &whole));
        assert!(!verify(7, 10_001, &whole));
        assert!(!verify(8, 10_000, &whole));
        assert!(verify(1, 0, &[]));
    }
}
