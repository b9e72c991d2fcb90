//! End to end through the real command: `serve` processes, helper
//! processes, and `save` / `load` clients joined by shell pipes, each
//! figure beside a baseline measured in the same run.
//!
//! - `file`: one `helper --state-file` of 1 GiB (in /dev/shm) saved into
//!   `save --output - > /dev/null`, against a raw Unix-socket copy of the
//!   same bytes between two threads of this process (1 MiB writes, the
//!   4 MiB socket buffer the streaming path asks for);
//! - `pipeline`: two coordinators (`serve`) in separate processes, N
//!   streaming demo helpers each, `save | load` through a pipe, against
//!   save alone into /dev/null, load alone from the stream in /dev/shm,
//!   and `cat | cat` of the same bytes (the pipe's ceiling); then the same
//!   through `pv -qL 200M` standing in for a network link, against `cat |
//!   pv -qL 200M | cat`. Reports each serve's CPU seconds per GiB
//!   (`/proc/PID/stat`) and peak RSS (`VmHWM`, reset before each run
//!   through `/proc/PID/clear_refs`);
//! - `plain`: 16 plain helpers of 64 MiB saved and loaded, for the
//!   serves' peak RSS;
//! - `v2`: native stream format version 2, one `helper --state-file` per
//!   side (files in /dev/shm) and two kinds of state of `V2_SIZE_MIB`
//!   each: lines shaped like `conntrack -L` output (tcp ESTABLISHED,
//!   TIME_WAIT, SYN_SENT and udp, 150 to 200 bytes, from a deterministic
//!   xorshift) and incompressible random bytes. Each kind is written plain
//!   (v1), `--compress`, `--key-file` (a key from `keygen`) and both, and
//!   measured as `save --output - > /dev/null`, `load --input STREAM`
//!   (the stream saved in /dev/shm) and `save | pv -qL 200M | load --input
//!   -` into the second serve: wall time, GB/s of state, stream size and
//!   state/stream ratio, each serve's CPU seconds per GiB of state. The
//!   destination's file is emptied before each load (outside the timing),
//!   and after the first load of each kind and encoding, from the file and
//!   through pv, it must equal the source's byte for byte. Targets: text
//!   `--compress` >= 4x smaller and >= 3x faster through pv; random
//!   `--compress` save and load <= 1.10x uncompressed; random `--key-file`
//!   save and load >= 1 GB/s, beside the unencrypted figure.
//!
//! Each process pipeline runs for seconds, so this is a plain `main`
//! rather than criterion: every case runs `PIPELINE_RUNS` times (default
//! 5), the cases of one round one after another so that they share the
//! machine's noise, and the table shows medians.
//!
//! ```sh
//! cargo bench --bench pipeline              # all of it, about 7 minutes
//! cargo bench --bench pipeline -- file      # one part: file, pipeline, plain, v2
//! V2_SIZE_MIB=64 PIPELINE_RUNS=1 cargo bench --bench pipeline -- v2   # a quick check
//! ```
//!
//! Settings (environment): `PIPELINE_RUNS`, `PIPELINE_HELPERS` (default
//! 2), `PIPELINE_SIZE_MIB` (per helper, default 512),
//! `PIPELINE_PLAIN_BUDGET_MIB` (the memory the serve may hold for plain
//! states, default 256), `V2_SIZE_MIB` (each `v2` state, default 1024;
//! `v2` takes 3 to 4 minutes with the defaults and `PIPELINE_RUNS=3`),
//! `V2_PV_RUNS` (the runs of `v2`'s `save | pv | load` cases, default 1:
//! at 200 MiB/s each takes seconds), `PIPELINE_EXE` (another build of
//! the command, to measure before and after).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The command under test: the one cargo built for this bench, or
/// `PIPELINE_EXE` (another build, to compare before and after).
fn exe() -> String {
    std::env::var("PIPELINE_EXE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dbus-vmstate").into())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the part `name` was asked for (no filter: every part).
fn wanted(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    filter.is_none_or(|f| name.contains(&f))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A child process killed and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// A `serve` process, started and ready.
struct Serve {
    proc: Proc,
    control: PathBuf,
    dir: PathBuf,
}

impl Serve {
    fn start(dir: &Path, ids: &[String]) -> Serve {
        let mut child = Command::new(exe())
            .arg("serve")
            .arg("--socket-dir")
            .arg(dir)
            .arg("--id-list")
            .arg(ids.join(","))
            .args(["--timeout", "300", "--connect-timeout", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("serve's stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("serve's ready line");
        assert!(line.starts_with("ready:"), "serve said {line:?}");
        Serve {
            proc: Proc(child),
            control: dir.join("control.sock"),
            dir: dir.to_path_buf(),
        }
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.proc.pid()))
            .expect("/proc/PID/stat");
        // Fields after the command name (which may hold spaces): state is
        // the first, utime the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }

    /// Peak RSS since the last [`Serve::reset_peak`], in KiB.
    fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Resets `VmHWM` to the current RSS (`clear_refs` value 5).
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.proc.pid()), "5");
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sock"))
    }
}

/// The unit of `/proc/PID/stat`'s times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output();
        out.ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A demo helper process: `size` bytes of generated state, or empty and
/// checking what it is loaded with (`destination`).
fn demo_helper(serve: &Serve, id: &str, seed: usize, size: u64, dest: bool, plain: bool) -> Proc {
    let mut cmd = Command::new(exe());
    cmd.arg("demo-helper")
        .arg("--socket")
        .arg(serve.socket(id))
        .args(["--id", id, "--size", &size.to_string()])
        .args(["--seed", &seed.to_string()]);
    if dest {
        cmd.arg("--destination");
    }
    if plain {
        cmd.arg("--plain");
    }
    Proc(cmd.stderr(Stdio::null()).spawn().expect("demo-helper"))
}

/// Runs `script` under bash with `pipefail`; returns its wall time.
fn shell(script: &str) -> Duration {
    try_shell(script).unwrap_or_else(|e| panic!("{e}"))
}

/// [`shell`], with a failure returned (the script, its status and its
/// stderr) rather than panicking.
fn try_shell(script: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let out = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("bash");
    let took = start.elapsed();
    if out.status.success() {
        Ok(took)
    } else {
        Err(format!(
            "{script}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `pv` (the rate limit standing in for a network link) is
/// installed.
fn has_pv() -> bool {
    Command::new("pv").arg("--version").output().is_ok()
}

/// A `helper --state-file` process serving `state` as helper `id`.
fn file_helper(serve: &Serve, id: &str, state: &Path) -> Proc {
    Proc(
        Command::new(exe())
            .arg("helper")
            .arg("--socket")
            .arg(serve.socket(id))
            .args(["--id", id, "--state-file"])
            .arg(state)
            .stderr(Stdio::null())
            .spawn()
            .expect("helper"),
    )
}

fn save_cmd(s: &Serve) -> String {
    format!(
        "{} -q save --control {} --output -",
        exe(),
        s.control.display()
    )
}

fn load_cmd(s: &Serve) -> String {
    format!(
        "{} -q load --control {} --input -",
        exe(),
        s.control.display()
    )
}

/// `text` as a Markdown table cell: a `|` would end the cell, a newline
/// the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " / ")
}

fn gbps(bytes: u64, t: f64) -> f64 {
    bytes as f64 / t / 1e9
}

/// One row of the targets table.
struct Target {
    what: String,
    measured: String,
    met: bool,
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// A raw copy of `bytes` over a Unix socket pair between two threads:
/// 1 MiB writes and reads, 4 MiB socket buffers. Returns the wall time.
fn raw_socket_copy(bytes: u64) -> Duration {
    let (a, mut b) = UnixStream::pair().expect("socket pair");
    let _ = socket2::SockRef::from(&a).set_send_buffer_size(4 << 20);
    let _ = socket2::SockRef::from(&b).set_recv_buffer_size(4 << 20);
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut a = a;
        let block = vec![0x5au8; MIB as usize];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(MIB) as usize;
            a.write_all(&block[..n]).expect("raw send");
            left -= n as u64;
        }
    });
    let mut buf = vec![0u8; MIB as usize];
    let mut got = 0u64;
    while got < bytes {
        match b.read(&mut buf).expect("raw recv") {
            0 => break,
            n => got += n as u64,
        }
    }
    sender.join().expect("sender");
    assert_eq!(got, bytes);
    start.elapsed()
}

/// `helper --state-file` of 1 GiB saved to /dev/null, against the raw
/// socket copy.
fn file_part(runs: usize, work: &Path, targets: &mut Vec<Target>, out: &mut String) {
    let size = GIB;
    let state = work.join("state-1g");
    write_pattern(&state, size);
    let serve = Serve::start(&work.join("file"), &["file".to_string()]);
    let _helper = file_helper(&serve, "file", &state);
    let save = format!("{} > /dev/null", save_cmd(&serve));
    shell(&save); // warm-up: the helper connects, the file is in memory
    let (mut raw, mut saved) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raw.push(raw_socket_copy(size).as_secs_f64());
        saved.push(shell(&save).as_secs_f64());
    }
    let (raw, saved) = (median(raw), median(saved));
    let ratio = raw / saved;
    let _ = writeln!(
        out,
        "\nhelper --state-file, 1 GiB, save --output - > /dev/null (median of {runs})\n\
         | case | time | throughput |\n|---|---|---|\n\
         | raw Unix socket, same bytes | {:.3} s | {:.2} GB/s |\n\
         | helper --state-file -> serve -> save > /dev/null | {:.3} s | {:.2} GB/s ({ratio:.2}x raw) |",
        raw,
        gbps(size, raw),
        saved,
        gbps(size, saved),
    );
    targets.push(Target {
        what: "helper --state-file 1 GiB save >= 0.5x raw socket".into(),
        measured: format!(
            "{:.2} vs {:.2} GB/s = {ratio:.2}x",
            gbps(size, saved),
            gbps(size, raw)
        ),
        met: ratio >= 0.5,
    });
    let _ = std::fs::remove_file(&state);
}

/// Writes `size` bytes that do not compress to nothing.
fn write_pattern(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("state file"));
    let mut block = vec![0u8; MIB as usize];
    let mut x = 0x9e3779b97f4a7c15u64;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    for i in 0..size / MIB {
        block[0..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block).expect("write state file");
    }
    f.flush().expect("flush state file");
}

/// The medians of one case: wall seconds, source and destination CPU
/// seconds, source and destination peak RSS (KiB, the largest run).
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    src_cpu: Vec<f64>,
    dst_cpu: Vec<f64>,
    src_peak: u64,
    dst_peak: u64,
}

impl Samples {
    /// Runs `script` once, measuring both serves around it.
    fn run(&mut self, script: &str, src: &Serve, dst: &Serve) {
        self.try_run(script, src, dst)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Samples::run`], with a failing script returned as an error (and
    /// not counted).
    fn try_run(&mut self, script: &str, src: &Serve, dst: &Serve) -> Result<(), String> {
        src.reset_peak();
        dst.reset_peak();
        let (s0, d0) = (src.cpu(), dst.cpu());
        let wall = try_shell(script)?;
        self.wall.push(wall.as_secs_f64());
        self.src_cpu.push((src.cpu() - s0).as_secs_f64());
        self.dst_cpu.push((dst.cpu() - d0).as_secs_f64());
        self.src_peak = self.src_peak.max(src.peak_kib());
        self.dst_peak = self.dst_peak.max(dst.peak_kib());
        Ok(())
    }

    fn wall(&self) -> f64 {
        median(self.wall.clone())
    }
}

/// Two serves, N streaming helpers each, save | load and its baselines.
fn pipeline_part(runs: usize, work: &Path, targets: &mut Vec<Target>, out: &mut String) {
    let n = env_u64("PIPELINE_HELPERS", 2) as usize;
    let size = env_u64("PIPELINE_SIZE_MIB", 512) * MIB;
    let ids: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
    let src = Serve::start(&work.join("src"), &ids);
    let dst = Serve::start(&work.join("dst"), &ids);
    let _helpers: Vec<Proc> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            [
                demo_helper(&src, id, i, size, false, false),
                demo_helper(&dst, id, i, size, true, false),
            ]
        })
        .collect();
    let stream = work.join("stream");
    // Warm-up, and the stream that the load-alone and cat cases read.
    shell(&format!("{} > {}", save_cmd(&src), stream.display()));
    let bytes = std::fs::metadata(&stream).expect("stream").len();
    shell(&format!("{} < {}", load_cmd(&dst), stream.display()));

    let s = stream.display();
    let cases = [
        (
            "save alone > /dev/null",
            format!("{} > /dev/null", save_cmd(&src)),
        ),
        (
            "load alone < stream in /dev/shm",
            format!("{} < {s}", load_cmd(&dst)),
        ),
        (
            "save | load",
            format!("{} | {}", save_cmd(&src), load_cmd(&dst)),
        ),
        (
            "cat stream | cat > /dev/null",
            format!("cat {s} | cat > /dev/null"),
        ),
    ];
    let mut samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    for _ in 0..runs {
        for (case, sample) in cases.iter().zip(&mut samples) {
            sample.run(&case.1, &src, &dst);
        }
    }
    let pv = has_pv();
    let limited = [
        (
            "save | pv -qL 200M | load",
            format!("{} | pv -qL 200M | {}", save_cmd(&src), load_cmd(&dst)),
        ),
        (
            "cat stream | pv -qL 200M | cat > /dev/null",
            format!("cat {s} | pv -qL 200M | cat > /dev/null"),
        ),
    ];
    let mut limited_samples: Vec<Samples> = limited.iter().map(|_| Samples::default()).collect();
    let limited_runs = runs.min(3);
    if pv {
        for _ in 0..limited_runs {
            for (case, sample) in limited.iter().zip(&mut limited_samples) {
                sample.run(&case.1, &src, &dst);
            }
        }
    }

    let gib = bytes as f64 / GIB as f64;
    let _ = writeln!(
        out,
        "\n{n} streaming helpers x {} MiB, stream of {bytes} bytes (median of {runs}; \
         CPU is each serve's user+system time, peak RSS the largest VmHWM of the runs)\n\
         | case | wall | throughput | source serve CPU s/GiB | destination serve CPU s/GiB | source VmHWM | destination VmHWM |\n\
         |---|---|---|---|---|---|---|",
        size / MIB
    );
    let mut row = |name: &str, sample: &Samples| {
        let wall = sample.wall();
        let name = cell(name);
        let _ = writeln!(
            out,
            "| {name} | {wall:.3} s | {:.2} GB/s | {:.3} | {:.3} | {:.1} MiB | {:.1} MiB |",
            gbps(bytes, wall),
            median(sample.src_cpu.clone()) / gib,
            median(sample.dst_cpu.clone()) / gib,
            sample.src_peak as f64 / 1024.0,
            sample.dst_peak as f64 / 1024.0,
        );
    };
    for (case, sample) in cases.iter().zip(&samples) {
        row(case.0, sample);
    }
    if pv {
        for (case, sample) in limited.iter().zip(&limited_samples) {
            row(&format!("{} (median of {limited_runs})", case.0), sample);
        }
    } else {
        let _ = writeln!(
            out,
            "(skipped the rate-limited cases: pv is not installed; apt-get install pv)"
        );
    }

    let [save, load, piped, cat] = [0, 1, 2, 3].map(|i| samples[i].wall());
    let slower = save.max(load);
    targets.push(Target {
        what: format!(
            "save|load of {n} x {} MiB <= 1.3x the slower of save alone and load alone",
            size / MIB
        ),
        measured: format!(
            "{piped:.3} s vs {slower:.3} s = {:.2}x (cat|cat: {cat:.3} s)",
            piped / slower
        ),
        met: piped <= 1.3 * slower,
    });
    if pv {
        let (limited, bare) = (limited_samples[0].wall(), limited_samples[1].wall());
        targets.push(Target {
            what: "save|load through pv -qL 200M <= 1.15x the bare transfer".into(),
            measured: format!("{limited:.3} s vs {bare:.3} s = {:.2}x", limited / bare),
            met: limited <= 1.15 * bare,
        });
    }
    let src_cpu = median(samples[2].src_cpu.clone()) / gib;
    let dst_cpu = median(samples[2].dst_cpu.clone()) / gib;
    targets.push(Target {
        what: "destination CPU per GiB loaded <= 1.1x source CPU per GiB saved (save|load)".into(),
        measured: format!(
            "{dst_cpu:.3} vs {src_cpu:.3} s/GiB = {:.2}x",
            dst_cpu / src_cpu
        ),
        met: dst_cpu <= 1.1 * src_cpu,
    });
    let _ = std::fs::remove_file(&stream);
}

/// 16 plain helpers of 64 MiB: the serves' peak RSS.
fn plain_part(runs: usize, work: &Path, targets: &mut Vec<Target>, out: &mut String) {
    let (n, size) = (16, 64 * MIB);
    let budget_mib = env_u64("PIPELINE_PLAIN_BUDGET_MIB", 256);
    let ids: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
    let src = Serve::start(&work.join("psrc"), &ids);
    let dst = Serve::start(&work.join("pdst"), &ids);
    let _helpers: Vec<Proc> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            [
                demo_helper(&src, id, i, size, false, true),
                demo_helper(&dst, id, i, size, true, true),
            ]
        })
        .collect();
    let stream = work.join("plain-stream");
    let (s, sd) = (stream.display(), &stream);
    // Warm-up: every helper connected and its state generated.
    shell(&format!("{} > {s}", save_cmd(&src)));
    shell(&format!("{} < {s}", load_cmd(&dst)));
    let mut save = Samples::default();
    let mut load = Samples::default();
    for _ in 0..runs.min(3) {
        save.run(&format!("{} > {s}", save_cmd(&src)), &src, &dst);
        load.run(&format!("{} < {s}", load_cmd(&dst)), &src, &dst);
    }
    let bytes = std::fs::metadata(sd).map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{n} plain helpers x {} MiB, stream of {bytes} bytes\n\
         | case | wall | source VmHWM | destination VmHWM |\n|---|---|---|---|\n\
         | save > stream in /dev/shm | {:.3} s | {:.1} MiB | - |\n\
         | load < stream in /dev/shm | {:.3} s | - | {:.1} MiB |",
        size / MIB,
        save.wall(),
        save.src_peak as f64 / 1024.0,
        load.wall(),
        load.dst_peak as f64 / 1024.0,
    );
    let limit = (budget_mib + 32) as f64;
    for (what, peak) in [("save", save.src_peak), ("load", load.dst_peak)] {
        let peak = peak as f64 / 1024.0;
        targets.push(Target {
            what: format!(
                "{n} plain x 64 MiB {what}: serve peak RSS <= budget ({budget_mib} MiB) + 32 MiB"
            ),
            measured: format!("{peak:.1} MiB"),
            met: peak <= limit,
        });
    }
    let _ = std::fs::remove_file(&stream);
}

/// A small deterministic generator (xorshift64) for the `v2` states.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One of `items`.
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// An IPv4 address: a client in 10/14, or a server in 192.168/20,
/// 172.16/19 or anywhere.
fn ipv4(rng: &mut XorShift, client: bool) -> String {
    let (a, b, c, d) = (
        rng.below(4),
        rng.below(256),
        rng.below(256),
        1 + rng.below(254),
    );
    match (client, a) {
        (true, _) => format!("10.{a}.{b}.{d}"),
        (false, 0) => format!("192.168.{}.{d}", b % 16),
        (false, 1) => format!("172.16.{}.{d}", b % 32),
        _ => format!("{}.{b}.{c}.{d}", 1 + rng.below(223)),
    }
}

/// Packet and byte counters of one direction (`packets=N bytes=N `),
/// roughly log-distributed.
fn counters(rng: &mut XorShift, line: &mut String, none: bool) {
    let packets = if none {
        0
    } else {
        let bits = rng.below(14);
        1 + rng.below(1 << bits)
    };
    let bytes = packets * (40 + rng.below(1461));
    let _ = write!(line, "packets={packets} bytes={bytes} ");
}

/// One line shaped like `conntrack -L` output (with accounting on): tcp
/// ESTABLISHED, TIME_WAIT or SYN_SENT, or udp without a state.
fn conntrack_line(rng: &mut XorShift, line: &mut String) {
    const TCP_PORTS: [u64; 10] = [443, 80, 22, 8080, 5432, 3306, 6443, 9090, 25, 993];
    const UDP_PORTS: [u64; 7] = [53, 123, 443, 51820, 5353, 161, 1194];
    let (client, server) = (ipv4(rng, true), ipv4(rng, false));
    let sport = 32768 + rng.below(28232);
    // Flags after the original tuple, and after the reply tuple.
    let (unreplied, assured, dport);
    if rng.below(10) < 7 {
        let (state, timeout) = match rng.below(20) {
            0..=11 => ("ESTABLISHED", rng.below(432_000)),
            12..=16 => ("TIME_WAIT", rng.below(120)),
            _ => ("SYN_SENT", rng.below(120)),
        };
        let _ = write!(line, "tcp      6 {timeout} {state} ");
        unreplied = state == "SYN_SENT";
        assured = !unreplied;
        dport = rng.pick(&TCP_PORTS);
    } else {
        let _ = write!(line, "udp      17 {} ", rng.below(180));
        unreplied = rng.below(5) == 0;
        assured = !unreplied && rng.below(2) == 0;
        dport = rng.pick(&UDP_PORTS);
    }
    let _ = write!(
        line,
        "src={client} dst={server} sport={sport} dport={dport} "
    );
    counters(rng, line, false);
    if unreplied {
        line.push_str("[UNREPLIED] ");
    }
    let _ = write!(
        line,
        "src={server} dst={client} sport={dport} dport={sport} "
    );
    counters(rng, line, unreplied);
    if assured {
        line.push_str("[ASSURED] ");
    }
    let _ = writeln!(line, "mark=0 use={}", 1 + rng.below(2));
}

/// Writes `size` bytes of conntrack-like lines of 150 to 200 bytes (the
/// last one cut at `size`); returns the number of lines and the shortest
/// and longest.
fn write_conntrack(path: &Path, size: u64) -> (u64, usize, usize) {
    let file = std::fs::File::create(path).expect("state file");
    let mut f = std::io::BufWriter::with_capacity(4 * MIB as usize, file);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut line = String::with_capacity(256);
    let (mut written, mut lines, mut shortest, mut longest) = (0, 0, usize::MAX, 0);
    while written < size {
        loop {
            line.clear();
            conntrack_line(&mut rng, &mut line);
            if (150..=200).contains(&line.len()) {
                break;
            }
        }
        let n = (size - written).min(line.len() as u64) as usize;
        f.write_all(&line.as_bytes()[..n])
            .expect("write state file");
        written += n as u64;
        lines += 1;
        shortest = shortest.min(line.len());
        longest = longest.max(line.len());
    }
    f.flush().expect("flush state file");
    (lines, shortest, longest)
}

/// Writes `size` bytes of xorshift output: nothing for zstd to find.
fn write_random(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).expect("state file");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut block = vec![0u8; 4 * MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write state file");
        left -= n as u64;
    }
}

/// Whether the files `a` and `b` hold the same bytes; an error says how
/// they differ.
fn same_file(a: &Path, b: &Path) -> Result<(), String> {
    let open =
        |p: &Path| std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let len = |f: &std::fs::File| f.metadata().map(|m| m.len()).unwrap_or(0);
    let (la, lb) = (len(&fa), len(&fb));
    if la != lb {
        return Err(format!("{la} bytes loaded as {lb}"));
    }
    let (mut ba, mut bb) = (vec![0u8; 4 * MIB as usize], vec![0u8; 4 * MIB as usize]);
    let mut at = 0u64;
    while at < la {
        let n = (la - at).min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n]).map_err(|e| e.to_string())?;
        fb.read_exact(&mut bb[..n]).map_err(|e| e.to_string())?;
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
            return Err(format!("differs at byte {}", at + i.unwrap_or(0) as u64));
        }
        at += n as u64;
    }
    Ok(())
}

/// How a `v2` stream is written: compressed, encrypted.
#[derive(Clone, Copy)]
struct Encoding {
    name: &'static str,
    compress: bool,
    encrypt: bool,
}

const ENCODINGS: [Encoding; 4] = [
    Encoding {
        name: "plain (v1)",
        compress: false,
        encrypt: false,
    },
    Encoding {
        name: "--compress",
        compress: true,
        encrypt: false,
    },
    Encoding {
        name: "--key-file",
        compress: false,
        encrypt: true,
    },
    Encoding {
        name: "--compress --key-file",
        compress: true,
        encrypt: true,
    },
];

/// One kind and encoding of the `v2` part: its samples, its stream's
/// size, and what failed.
#[derive(Default)]
struct V2Case {
    save: Samples,
    load: Samples,
    piped: Samples,
    stream_bytes: u64,
    errors: Vec<String>,
}

impl V2Case {
    /// Median wall time of `samples`, or the first error.
    fn wall(&self, samples: &Samples) -> Result<f64, String> {
        match self.errors.first() {
            _ if !samples.wall.is_empty() => Ok(samples.wall()),
            Some(e) => Err(e.clone()),
            None => Err("not measured".into()),
        }
    }
}

/// Which of a [`V2Case`]'s samples a target compares.
type Pick = fn(&V2Case) -> &Samples;

/// `save --output - [--compress] [--key-file K]`.
fn v2_save_cmd(s: &Serve, enc: Encoding, key: &Path) -> String {
    let mut cmd = save_cmd(s);
    if enc.compress {
        cmd.push_str(" --compress");
    }
    if enc.encrypt {
        let _ = write!(cmd, " --key-file {}", key.display());
    }
    cmd
}

/// `load --input INPUT [--key-file K]`.
fn v2_load_cmd(s: &Serve, enc: Encoding, key: &Path, input: &str) -> String {
    let mut cmd = format!(
        "{} -q load --control {} --input {input}",
        exe(),
        s.control.display()
    );
    if enc.encrypt {
        let _ = write!(cmd, " --key-file {}", key.display());
    }
    cmd
}

/// One `helper --state-file` per side, conntrack-like text and random
/// bytes, each saved and loaded plain (v1), compressed, encrypted and
/// both.
fn v2_part(runs: usize, work: &Path, targets: &mut Vec<Target>, out: &mut String) {
    let size = env_u64("V2_SIZE_MIB", 1024).max(1) * MIB;
    let mib = size / MIB;
    let gib = size as f64 / GIB as f64;
    let key = work.join("v2.key");
    shell(&format!("{} -q keygen {}", exe(), key.display()));
    let pv = has_pv();
    let limited_runs = env_u64("V2_PV_RUNS", 1).max(1) as usize;
    let mut checks = Vec::new();
    let mut results = Vec::new();
    for kind in ["text", "random"] {
        let src_state = work.join(format!("v2-{kind}-src"));
        let dst_state = work.join(format!("v2-{kind}-dst"));
        let started = Instant::now();
        let what = if kind == "text" {
            let (lines, shortest, longest) = write_conntrack(&src_state, size);
            format!("conntrack-like text, {lines} lines of {shortest} to {longest} bytes")
        } else {
            write_random(&src_state, size);
            "random bytes (xorshift64)".to_string()
        };
        let generated = started.elapsed().as_secs_f64();
        std::fs::File::create(&dst_state).expect("destination state file");
        let ids = ["state".to_string()];
        let src = Serve::start(&work.join(format!("v2-{kind}-s")), &ids);
        let dst = Serve::start(&work.join(format!("v2-{kind}-d")), &ids);
        let helpers = [
            file_helper(&src, "state", &src_state),
            file_helper(&dst, "state", &dst_state),
        ];
        shell(&format!("{} > /dev/null", save_cmd(&src))); // warm-up
        let streams: Vec<PathBuf> = ENCODINGS
            .iter()
            .enumerate()
            .map(|(i, _)| work.join(format!("v2-{kind}-stream{i}")))
            .collect();
        let mut cases: Vec<V2Case> = ENCODINGS.iter().map(|_| V2Case::default()).collect();
        // The stream each load reads (its save also warms that encoding
        // up). Before every load the destination's file is emptied, outside
        // the timing: no load pays for freeing the last one's pages, and a
        // load that writes nothing leaves a file that fails the check.
        for ((enc, stream), case) in ENCODINGS.iter().zip(&streams).zip(&mut cases) {
            let s = stream.display();
            if let Err(e) = try_shell(&format!("{} > {s}", v2_save_cmd(&src, *enc, &key))) {
                case.errors.push(format!("{kind} {}: {e}", enc.name));
            }
            case.stream_bytes = std::fs::metadata(stream).map(|m| m.len()).unwrap_or(0);
        }
        let empty_destination = || {
            std::fs::File::create(&dst_state).expect("destination state file");
        };
        // Each case runs `script` as `samples`; the first run of a load is
        // checked against the source (`check`).
        let mut measure = |case: &mut V2Case,
                           enc: Encoding,
                           pick: fn(&mut V2Case) -> &mut Samples,
                           script: &str,
                           load: bool,
                           check: Option<&str>| {
            if !case.errors.is_empty() {
                return;
            }
            if load {
                empty_destination();
            }
            let mut result = pick(case).try_run(script, &src, &dst);
            if let (Some(after), Ok(())) = (check, &result) {
                result =
                    same_file(&src_state, &dst_state).map_err(|e| format!("after {after}: {e}"));
                checks.push(
                    result
                        .clone()
                        .map_err(|e| format!("{kind} {}: {e}", enc.name)),
                );
            }
            if let Err(e) = result {
                case.errors.push(format!("{kind} {}: {e}", enc.name));
            }
        };
        for round in 0..runs {
            for ((enc, stream), case) in ENCODINGS.iter().zip(&streams).zip(&mut cases) {
                let save = format!("{} > /dev/null", v2_save_cmd(&src, *enc, &key));
                let load = v2_load_cmd(&dst, *enc, &key, &stream.display().to_string());
                let check = (round == 0).then_some("load --input stream");
                measure(case, *enc, |c| &mut c.save, &save, false, None);
                measure(case, *enc, |c| &mut c.load, &load, true, check);
            }
        }
        for stream in &streams {
            let _ = std::fs::remove_file(stream);
        }
        if pv {
            for round in 0..limited_runs {
                for (enc, case) in ENCODINGS.iter().zip(&mut cases) {
                    let piped = format!(
                        "{} | pv -qL 200M | {}",
                        v2_save_cmd(&src, *enc, &key),
                        v2_load_cmd(&dst, *enc, &key, "-")
                    );
                    let check = (round == 0).then_some("save | pv | load");
                    measure(case, *enc, |c| &mut c.piped, &piped, true, check);
                }
            }
        }
        drop(helpers);
        drop((src, dst));
        let _ = std::fs::remove_file(&src_state);
        let _ = std::fs::remove_file(&dst_state);

        let _ = writeln!(
            out,
            "\nv2, {what}: {mib} MiB, one helper --state-file per side (generated in \
             {generated:.1} s); save and load median of {runs}, save | pv | load of \
             {limited_runs}; GB/s of state; CPU is each serve's user+system time per GiB \
             of state\n\
             | encoding | case | wall | state GB/s | stream bytes | state/stream | \
             source serve CPU s/GiB | destination serve CPU s/GiB |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for (enc, case) in ENCODINGS.iter().zip(&cases) {
            let ratio = size as f64 / case.stream_bytes as f64;
            let rows = [
                ("save --output - > /dev/null", &case.save, true, false),
                ("load --input stream in /dev/shm", &case.load, false, true),
                (
                    "save | pv -qL 200M | load --input -",
                    &case.piped,
                    true,
                    true,
                ),
            ];
            for (name, samples, src_cpu, dst_cpu) in rows {
                if samples.wall.is_empty() {
                    continue;
                }
                let wall = samples.wall();
                let cpu = |on: bool, v: &Vec<f64>| {
                    if on {
                        format!("{:.3}", median(v.clone()) / gib)
                    } else {
                        "-".into()
                    }
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {wall:.3} s | {:.2} | {} | {ratio:.2}x | {} | {} |",
                    cell(enc.name),
                    cell(name),
                    gbps(size, wall),
                    case.stream_bytes,
                    cpu(src_cpu, &samples.src_cpu),
                    cpu(dst_cpu, &samples.dst_cpu),
                );
            }
            for e in &case.errors {
                let _ = writeln!(
                    out,
                    "| {} | **error** | {} | | | | | |",
                    cell(enc.name),
                    cell(e)
                );
            }
        }
        if !pv {
            let _ = writeln!(
                out,
                "(skipped save | pv | load: pv is not installed; apt-get install pv)"
            );
        }
        results.push(cases);
    }

    let (text, random) = (&results[0], &results[1]);
    let [plain, compress, encrypt] = [0, 1, 2];
    let ratio = size as f64 / text[compress].stream_bytes as f64;
    targets.push(Target {
        what: "v2 text --compress: stream >= 4x smaller than the state".into(),
        measured: format!(
            "{} bytes for {size} = {ratio:.2}x",
            text[compress].stream_bytes
        ),
        met: text[compress].errors.is_empty() && ratio >= 4.0,
    });
    // A comparison of two cases' median walls: (measured, met).
    let compare = |a: Result<f64, String>,
                   b: Result<f64, String>,
                   met: &dyn Fn(f64, f64) -> bool,
                   show: &dyn Fn(f64, f64) -> String| match (a, b) {
        (Ok(a), Ok(b)) => (show(a, b), met(a, b)),
        (Err(e), _) | (_, Err(e)) => (format!("error: {e}"), false),
    };
    if pv {
        let (measured, met) = compare(
            text[plain].wall(&text[plain].piped),
            text[compress].wall(&text[compress].piped),
            &|p, c| p >= 3.0 * c,
            &|p, c| format!("{c:.3} s vs {p:.3} s = {:.2}x faster", p / c),
        );
        targets.push(Target {
            what: "v2 text save|pv -qL 200M|load: --compress >= 3x faster than without".into(),
            measured,
            met,
        });
    }
    let steps: [(&str, Pick); 2] = [("save", |c| &c.save), ("load", |c| &c.load)];
    for (what, pick) in steps {
        let (measured, met) = compare(
            random[compress].wall(pick(&random[compress])),
            random[plain].wall(pick(&random[plain])),
            &|c, p| c <= 1.10 * p,
            &|c, p| format!("{c:.3} s vs {p:.3} s = {:.2}x", c / p),
        );
        targets.push(Target {
            what: format!("v2 random --compress {what} <= 1.10x the uncompressed time"),
            measured,
            met,
        });
    }
    for (what, pick) in steps {
        let (measured, met) = compare(
            random[encrypt].wall(pick(&random[encrypt])),
            random[plain].wall(pick(&random[plain])),
            &|e, _| gbps(size, e) >= 1.0,
            &|e, p| {
                format!(
                    "{:.2} GB/s (unencrypted {:.2} GB/s)",
                    gbps(size, e),
                    gbps(size, p)
                )
            },
        );
        targets.push(Target {
            what: format!(
                "v2 encrypted (--key-file) {mib} MiB random {what} through the coordinator >= 1 GB/s"
            ),
            measured,
            met,
        });
    }
    let errors: Vec<&String> = results.iter().flatten().flat_map(|c| &c.errors).collect();
    targets.push(Target {
        what: "v2 every case ran without an error".into(),
        measured: match errors.first() {
            None => "no errors".into(),
            Some(first) => format!(
                "{} errors (see the tables), the first: {}",
                errors.len(),
                first.lines().next().unwrap_or_default()
            ),
        },
        met: errors.is_empty(),
    });
    let failed: Vec<&String> = checks.iter().filter_map(|c| c.as_ref().err()).collect();
    targets.push(Target {
        what: "v2 every checked load rebuilds the source state byte for byte".into(),
        measured: if failed.is_empty() {
            format!("{} of {} equal", checks.len(), checks.len())
        } else {
            let failed: Vec<&str> = failed.iter().map(|s| s.as_str()).collect();
            format!(
                "{} of {} differ: {}",
                failed.len(),
                checks.len(),
                failed.join("; ")
            )
        },
        met: failed.is_empty() && !checks.is_empty(),
    });
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // that asks for a measurement: build only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pipeline: run with cargo bench --bench pipeline");
        return;
    }
    let runs = env_u64("PIPELINE_RUNS", 5).max(1) as usize;
    let work = tempfile::Builder::new()
        .prefix("dv-pipe")
        .tempdir_in("/dev/shm")
        .expect("a directory in /dev/shm");
    let mut targets = Vec::new();
    let mut out = String::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        out,
        "command: {}\nload average at the start: {}",
        exe(),
        load.trim()
    );
    if wanted("file") {
        file_part(runs, work.path(), &mut targets, &mut out);
    }
    if wanted("pipeline") {
        pipeline_part(runs, work.path(), &mut targets, &mut out);
    }
    if wanted("plain") {
        plain_part(runs, work.path(), &mut targets, &mut out);
    }
    if wanted("v2") {
        v2_part(runs, work.path(), &mut targets, &mut out);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(out, "\nload average at the end: {}", load.trim());
    let _ = writeln!(out, "\n| target | measured (same run) | |\n|---|---|---|");
    for t in &targets {
        let (what, measured) = (cell(&t.what), cell(&t.measured));
        let _ = writeln!(out, "| {what} | {measured} | {} |", verdict(t.met));
    }
    print!("{out}");
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pipeline-bench.md");
    if std::fs::write(&report, &out).is_ok() {
        println!("\n(also written to {})", report.display());
    }
}
