//! What the commands print: human tables and JSON documents, and the
//! standard output they go to.

use std::io::{self, Write};
use std::time::Duration;

use dbus_vmstate::control::Report;
use dbus_vmstate::coordinator::{HelperStatus, QemuRound, QemuStatus, Transfer};
use serde_json::{json, Value};

/// Standard output for what a command prints. A reader that stops early
/// (`dbus-vmstate status | head -1`) is not an error: once a write meets a
/// closed pipe, the rest of the output is dropped and the command goes on
/// to exit as it would have.
pub type Stdout = ClosedIsDone<io::Stdout>;

impl Stdout {
    /// Standard output, not yet seen closed.
    pub fn new() -> Self {
        ClosedIsDone::wrap(io::stdout())
    }
}

/// A writer for which a closed pipe (`EPIPE`) means the reader is done:
/// that write and every later one succeed without writing anything.
#[derive(Debug)]
pub struct ClosedIsDone<W> {
    out: W,
    closed: bool,
}

impl<W: Write> ClosedIsDone<W> {
    fn wrap(out: W) -> Self {
        ClosedIsDone { out, closed: false }
    }

    /// `result`, with a closed pipe noted and turned into `ok`.
    fn unless_closed<T>(&mut self, result: io::Result<T>, ok: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(ok)
            }
            other => other,
        }
    }
}

impl<W: Write> Write for ClosedIsDone<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let written = self.out.write(buf);
        self.unless_closed(written, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.out.flush();
        self.unless_closed(flushed, ())
    }
}

/// Prints the report of a save or load: JSON, or the human report unless
/// `quiet`; on stderr when stdout carries the stream.
///
/// # Errors
///
/// When writing fails (a closed stdout is not a failure, see [`Stdout`]).
pub fn print_report(
    operation: &str,
    summary: &str,
    report: &Report,
    json: bool,
    quiet: bool,
    stdout_is_stream: bool,
) -> io::Result<()> {
    let mut out: Box<dyn Write> = if stdout_is_stream {
        Box::new(io::stderr())
    } else {
        Box::new(Stdout::new())
    };
    if json {
        print_json(&mut out, &report_json(operation, report))?;
    } else if !quiet {
        write_report(&mut out, summary, report)?;
    }
    out.flush()
}

/// A byte count for people: `512 B`, `4.0 KiB`, `16.0 MiB`. Where one
/// decimal would hide that the count is not what it shows (1,052,672 bytes
/// as `1.0 MiB`, next to a limit of 1 MiB), the exact count follows:
/// `1.0 MiB (1052672 B)`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut scale = 1024u64;
    let mut unit = 0;
    while n / scale >= 1024 && unit + 1 < UNITS.len() {
        scale *= 1024;
        unit += 1;
    }
    let shown = format!("{:.1}", n as f64 / scale as f64);
    // What the shown figure stands for, in bytes, against the real count.
    let tenths: u64 = shown.replace('.', "").parse().unwrap_or(0);
    if u128::from(tenths) * u128::from(scale) == u128::from(n) * 10 {
        format!("{shown} {}", UNITS[unit])
    } else if shown.ends_with(".0") {
        format!("{shown} {} ({n} B)", UNITS[unit])
    } else {
        format!("{shown} {}", UNITS[unit])
    }
}

/// `1 helper`, `2 helpers`: a count and its noun, singular or plural.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ms_value(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn transfer_json(t: &Option<Transfer>) -> Value {
    match t {
        Some(t) => json!({ "bytes": t.bytes, "duration_ms": ms_value(t.duration) }),
        None => Value::Null,
    }
}

/// The JSON document of a save or load. `stream_bytes` is there when the
/// report knows it (a save); each helper says which path its state took
/// (`"plain"` or `"stream"`).
pub fn report_json(operation: &str, report: &Report) -> Value {
    let mut doc = json!({
        "operation": operation,
        "format": report.format.as_str(),
        "duration_ms": ms_value(report.duration),
        "helpers": report.helpers.iter().map(|h| json!({
            "id": h.id,
            "path": h.mode.as_str(),
            "bytes": h.transfer.bytes,
            "duration_ms": ms_value(h.transfer.duration),
        })).collect::<Vec<_>>(),
        "skipped": report.skipped.iter().map(|s| json!({
            "id": s.id,
            "reason": s.reason,
        })).collect::<Vec<_>>(),
    });
    if let Some(bytes) = report.stream_bytes {
        doc["stream_bytes"] = json!(bytes);
    }
    doc
}

/// The human report of a save or load: one summary line, one line per
/// helper, one per skipped helper.
pub fn write_report(out: &mut dyn Write, summary: &str, report: &Report) -> io::Result<()> {
    writeln!(out, "{summary} in {}", ms(report.duration))?;
    let width = report
        .helpers
        .iter()
        .map(|h| h.id.len())
        .max()
        .unwrap_or(0)
        .max(6);
    for h in &report.helpers {
        writeln!(
            out,
            "  {:<width$}  {:<6}  {:>12}  {:>10}",
            h.id,
            h.mode.as_str(),
            bytes(h.transfer.bytes),
            ms(h.transfer.duration)
        )?;
    }
    for s in &report.skipped {
        writeln!(out, "  skipped {}: {}", s.id, s.reason)?;
    }
    Ok(())
}

/// The JSON document of `status`.
pub fn status_json(helpers: &[HelperStatus], qemu: Option<&QemuStatus>) -> Value {
    let round = |r: &Option<QemuRound>| {
        r.as_ref().map(|r| {
            json!({
                "helpers": r.helpers,
                "bytes": r.bytes,
                "duration_ms": r.duration.as_secs_f64() * 1e3,
                "failures": r.failures,
            })
        })
    };
    let qemu = qemu.map(|q| {
        json!({
            "socket": q.socket.display().to_string(),
            "connected": q.connected,
            "pid": q.pid,
            "uid": q.uid,
            "last_save": round(&q.last_save),
            "last_load": round(&q.last_load),
            "last_rejection": q.last_rejection,
        })
    });
    json!({
        "qemu": qemu,
        "helpers": helpers.iter().map(|h| json!({
            "id": h.id,
            "socket": h.socket.display().to_string(),
            "required": h.required,
            "connected": h.connected,
            "pid": h.pid,
            "uid": h.uid,
            "last_save": transfer_json(&h.last_save),
            "last_load": transfer_json(&h.last_load),
            "last_rejection": h.last_rejection,
        })).collect::<Vec<_>>(),
    })
}

fn transfer_text(t: &Option<Transfer>) -> String {
    match t {
        Some(t) => format!("{} in {}", bytes(t.bytes), ms(t.duration)),
        None => "-".to_string(),
    }
}

/// The human table of `status`.
pub fn write_status(out: &mut dyn Write, helpers: &[HelperStatus]) -> io::Result<()> {
    let width = helpers.iter().map(|h| h.id.len()).max().unwrap_or(0).max(6);
    writeln!(
        out,
        "{:<width$}  {:<8}  {:<9}  {:>8}  {:>6}  {:<22}  last load",
        "helper", "required", "connected", "pid", "uid", "last save"
    )?;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    for h in helpers {
        let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<width$}  {:<8}  {:<9}  {:>8}  {:>6}  {:<22}  {}",
            h.id,
            yes_no(h.required),
            yes_no(h.connected),
            opt(h.pid),
            opt(h.uid),
            transfer_text(&h.last_save),
            transfer_text(&h.last_load),
        )?;
        if let Some(why) = &h.last_rejection {
            writeln!(out, "{:<width$}  last rejected connection: {why}", "")?;
        }
    }
    Ok(())
}

/// The QEMU lines of `status`, after the helpers' table.
pub fn write_qemu_status(out: &mut dyn Write, qemu: &QemuStatus) -> io::Result<()> {
    let who = match (qemu.connected, qemu.pid, qemu.uid) {
        (false, ..) => "not connected".to_string(),
        (true, pid, uid) => {
            let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            format!("connected (pid {}, uid {})", opt(pid), opt(uid))
        }
    };
    writeln!(out, "qemu: {} {who}", qemu.socket.display())?;
    for (what, round) in [("save", &qemu.last_save), ("load", &qemu.last_load)] {
        let Some(round) = round else {
            writeln!(out, "  last {what}: -")?;
            continue;
        };
        writeln!(
            out,
            "  last {what}: {} ({}) in {}, {}",
            count(round.helpers.len() as u64, "helper", "helpers"),
            bytes(round.bytes),
            ms(round.duration),
            count(round.failures.len() as u64, "failure", "failures"),
        )?;
        for failure in &round.failures {
            writeln!(out, "    {failure}")?;
        }
    }
    if let Some(why) = &qemu.last_rejection {
        writeln!(out, "  last rejected connection: {why}")?;
    }
    Ok(())
}

/// Prints a JSON document on one line.
pub fn print_json(out: &mut dyn Write, value: &Value) -> io::Result<()> {
    writeln!(out, "{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then fails every write with `kind`.
    struct Pipe {
        taken: Vec<u8>,
        room: usize,
        kind: io::ErrorKind,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.taken.len() >= self.room {
                return Err(self.kind.into());
            }
            let n = buf.len().min(self.room - self.taken.len());
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pipe(room: usize, kind: io::ErrorKind) -> ClosedIsDone<Pipe> {
        ClosedIsDone::wrap(Pipe {
            taken: Vec::new(),
            room,
            kind,
        })
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        let mut out = pipe(4, io::ErrorKind::BrokenPipe);
        writeln!(out, "helper  connected").unwrap();
        writeln!(out, "more").unwrap();
        out.flush().unwrap();
        assert_eq!(out.out.taken, b"help");
        assert!(out.closed);
    }

    #[test]
    fn other_write_errors_still_fail() {
        let mut out = pipe(0, io::ErrorKind::StorageFull);
        let e = writeln!(out, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(16 << 20), "16.0 MiB");
        assert_eq!(bytes(1_052_672), "1.0 MiB (1052672 B)");
        assert_eq!(bytes(1_572_864), "1.5 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
