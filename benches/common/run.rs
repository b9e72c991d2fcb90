//! The record of one measuring run, for `benches/chart.py`: criterion
//! keeps each benchmark's latest figures whatever run measured them, so
//! after a filtered run (`-- FILTER`) its directory holds figures of
//! several runs. [`RUN_FILE`] names the last run (`run ID`) and each
//! benchmark it measured (`bench GROUP/NAME/SIZE`), and the run id heads
//! the bench's own files; chart.py refuses figures of any other run.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::criterion_dir;

/// The run record, in criterion's directory.
pub const RUN_FILE: &str = "dbus-vmstate-run.txt";

struct Run {
    id: String,
    file: Mutex<File>,
}

static RUN: OnceLock<Option<Run>> = OnceLock::new();

/// Whether criterion measures in this process, by the rule its
/// `configure_from_args` follows: `--bench` (which `cargo bench` passes),
/// and neither `--test`, `--list` nor `--profile-time`, which write no
/// figures. Only a measuring run replaces the record.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list") && !has("--profile-time")
}

/// Starts a new record (once per process), if this run measures: its id
/// is the start time and the process id.
pub fn start() {
    RUN.get_or_init(|| {
        if !measuring() {
            return None;
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = format!("{secs}-{}", std::process::id());
        let dir = criterion_dir();
        std::fs::create_dir_all(&dir).expect("criterion's directory");
        let mut file = File::create(dir.join(RUN_FILE)).expect("create the run record");
        writeln!(file, "run {id}").expect("write the run record");
        Some(Run {
            id,
            file: Mutex::new(file),
        })
    });
}

/// Records that criterion measured `full_id` and wrote its figures.
pub fn measured(full_id: &str) {
    let Some(Some(run)) = RUN.get() else {
        return;
    };
    let mut file = run.file.lock().expect("run record");
    writeln!(file, "bench {full_id}").expect("write the run record");
}

/// Writes `text` into criterion's directory as `name`, headed by this
/// run's id, if this run measures (a test run leaves the last run's file).
pub fn write(name: &str, text: &str) {
    let Some(Some(run)) = RUN.get() else {
        return;
    };
    let path = criterion_dir().join(name);
    if let Err(e) = std::fs::write(&path, format!("run {}\n{text}", run.id)) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
