//! `serve` and its clients (`save`, `load`, `status`) as real processes,
//! the way a deployment runs them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::util::process::*;
use crate::util::{pattern, tmpdir};
use dbus_vmstate::stream::{native, qemu, Limits, Record};

fn save(serve: &Serve, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "save".to_string(),
        "--control".into(),
        serve.control_arg(),
        "--output".into(),
        output.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_bin(args)
}

fn load(serve: &Serve, input: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "load".to_string(),
        "--control".into(),
        serve.control_arg(),
        "--input".into(),
        input.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_bin(args)
}

/// The README walkthrough: two helpers saved to a file, inspected, loaded
/// through a second serve into fresh helpers.
#[test]
fn walkthrough_save_inspect_load() {
    let tmp = tmpdir();
    let root = tmp.path();
    let (src_dir, dst_dir) = (root.join("src"), root.join("dst"));
    let slirp_v1 = pattern(5000, 1);
    let tpm_v1 = b"tpm state v1".to_vec();
    std::fs::write(root.join("slirp.state"), &slirp_v1).unwrap();
    std::fs::write(root.join("tpm.state"), &tpm_v1).unwrap();

    let src = Serve::start(&src_dir, &["--id-list", "slirp,tpm"]);
    assert!(src.ready.contains(&src.control_arg()), "{}", src.ready);
    assert_eq!(
        std::fs::metadata(&src_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let _h1 = Helper::file(&src_dir, "slirp", &root.join("slirp.state"));
    let _h2 = Helper::file(&src_dir, "tpm", &root.join("tpm.state"));

    let stream = root.join("helpers.vmstate");
    let out = save(&src, &stream, &[]);
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("saved 2 helpers"),
        "{}",
        text(&out.stdout)
    );

    let records =
        native::read_all(std::fs::File::open(&stream).unwrap(), Limits::default()).unwrap();
    let mut ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["slirp", "tpm"]);

    let out = run_bin(["inspect", stream.to_str().unwrap()]);
    assert_exit(&out, 0);
    let shown = text(&out.stdout);
    assert!(shown.contains("checksums verified"), "{shown}");
    assert!(
        shown.contains("slirp") && shown.contains(" 5000 "),
        "{shown}"
    );

    std::fs::write(root.join("slirp.state"), b"empty").unwrap();
    std::fs::write(root.join("tpm.state"), b"empty").unwrap();
    let dst = Serve::start(&dst_dir, &["--id-list", "slirp,tpm"]);
    let _d1 = Helper::file(&dst_dir, "slirp", &root.join("slirp.state"));
    let _d2 = Helper::file(&dst_dir, "tpm", &root.join("tpm.state"));
    let out = load(&dst, &stream, &[]);
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("loaded 2 helpers"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(root.join("slirp.state")).unwrap(), slirp_v1);
    assert_eq!(std::fs::read(root.join("tpm.state")).unwrap(), tpm_v1);
}

/// `save --output - | load --input -`, in both formats.
#[test]
fn save_to_a_pipe_and_load_from_it() {
    for format in ["native", "qemu"] {
        let tmp = tmpdir();
        let root = tmp.path();
        let (src_dir, dst_dir) = (root.join("src"), root.join("dst"));
        let state = pattern(70_000, 7);
        std::fs::write(root.join("a.src"), &state).unwrap();
        std::fs::write(root.join("a.dst"), b"").unwrap();
        let src = Serve::start(&src_dir, &["--id-list", "a"]);
        let dst = Serve::start(&dst_dir, &["--id-list", "a"]);
        let _s = Helper::file(&src_dir, "a", &root.join("a.src"));
        let _d = Helper::file(&dst_dir, "a", &root.join("a.dst"));

        let mut saver = bin()
            .args(["save", "--control", &src.control_arg(), "--output", "-"])
            .args(["--format", format, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = saver.stdout.take().unwrap();
        let loader = bin()
            .args([
                "load",
                "--control",
                &dst.control_arg(),
                "--input",
                "-",
                "--json",
            ])
            .stdin(pipe)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let saved = wait_output(saver);
        let loaded = wait_output(loader);
        assert_exit(&saved, 0);
        assert_exit(&loaded, 0);
        // The save's report goes to stderr: stdout carried the stream.
        let report: serde_json::Value = serde_json::from_slice(&saved.stderr).unwrap();
        assert_eq!(report["format"], format);
        assert_eq!(report["helpers"][0]["bytes"], 70_000);
        // `helper --state-file` streams its file.
        assert_eq!(report["helpers"][0]["path"], "stream");
        assert!(report["stream_bytes"].as_u64().unwrap() > 70_000);
        let report: serde_json::Value = serde_json::from_slice(&loaded.stdout).unwrap();
        assert_eq!(report["format"], format, "load detected the format");
        assert_eq!(report["helpers"][0]["id"], "a");
        assert_eq!(report["helpers"][0]["path"], "stream");
        // A load reports no stream size rather than a null one.
        assert!(report.get("stream_bytes").is_none(), "{report}");
        assert_eq!(
            std::fs::read(root.join("a.dst")).unwrap(),
            state,
            "{format}"
        );
    }
}

#[test]
fn qemu_format_file_matches_qemus_layout() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    std::fs::write(root.join("idA"), b"I'am\0idA!\0").unwrap();
    std::fs::write(root.join("idB"), b"I'am\0idB!\0").unwrap();
    let serve = Serve::start(&dir, &["--id-list", "idA,idB"]);
    let _a = Helper::file(&dir, "idA", &root.join("idA"));
    let _b = Helper::file(&dir, "idB", &root.join("idB"));
    let out_path = root.join("out.payload");
    assert_exit(&save(&serve, &out_path, &["--format", "qemu"]), 0);
    let decoded = qemu::decode(&std::fs::read(&out_path).unwrap(), Limits::default()).unwrap();
    let mut records = decoded.records;
    records.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        records,
        [
            Record::new("idA", b"I'am\0idA!\0".to_vec()),
            Record::new("idB", b"I'am\0idB!\0".to_vec())
        ]
    );
    assert_eq!(decoded.trailing_bytes, 0);
}

#[test]
fn status_reports_helpers_and_transfers() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    std::fs::write(root.join("a.state"), b"0123456789").unwrap();
    let serve = Serve::start(&dir, &["--id-list", "a,b", "--optional", "b"]);
    let helper = Helper::file(&dir, "a", &root.join("a.state"));
    let status = || {
        let out = run_bin(["status", "--control", &serve.control_arg(), "--json"]);
        assert_exit(&out, 0);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    wait_until("helper a to connect", || {
        status()["helpers"][0]["connected"] == true
    });
    assert_exit(&save(&serve, &root.join("x.vmstate"), &[]), 0);
    let doc = status();
    let a = &doc["helpers"][0];
    assert_eq!(a["id"], "a");
    assert_eq!(a["pid"], helper.0.id());
    assert_eq!(a["uid"], crate::util::euid());
    assert_eq!(a["last_save"]["bytes"], 10);
    assert_eq!(a["last_load"], serde_json::Value::Null);
    let b = &doc["helpers"][1];
    assert_eq!(b["id"], "b");
    assert_eq!(b["connected"], false);
    assert_eq!(b["required"], false);

    // A helper that claims another Id on b's socket is turned away: it
    // exits 2 with the coordinator's reason, and status says why.
    let impostor = bin()
        .args([
            "helper",
            "--id",
            "x",
            "--state-file",
            "/dev/null",
            "--socket",
        ])
        .arg(dir.join("b.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(impostor);
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("helper \"x\"") && err.contains("it claims Id \"x\""),
        "{err}"
    );
    wait_until("the impostor's rejection", || {
        status()["helpers"][1]["last_rejection"]
            .as_str()
            .is_some_and(|r| r.contains("it claims Id \"x\""))
    });
    assert!(
        serve.log().contains("rejected connection"),
        "{}",
        serve.log()
    );

    let out = run_bin(["status", "--control", &serve.control_arg()]);
    assert_exit(&out, 0);
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["a", "yes", "yes"]) && l.contains("10 B")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["b", "no", "no"])),
        "{table}"
    );
    assert!(
        table.contains("last rejected connection: it claims Id \"x\""),
        "{table}"
    );
}

/// A failed save leaves no file, and an existing file untouched; the
/// error names the helper and the command's exit status.
#[test]
fn failed_save_leaves_existing_file_untouched() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let serve = Serve::start(&dir, &["--id-list", "good,bad"]);
    std::fs::write(root.join("good.state"), b"fine").unwrap();
    let _g = Helper::file(&dir, "good", &root.join("good.state"));
    let _b = Helper::start(&dir, "bad", &["--save-cmd", "echo partial; exit 3"]);
    let out_dir = root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("helpers.vmstate");
    std::fs::write(&target, b"previous save").unwrap();

    let out = save(&serve, &target, &[]);
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains("helper \"bad\""), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(err.contains("org.dbusvmstate.Error.HelperFailed"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"previous save");
    assert_eq!(
        entries(&out_dir),
        ["helpers.vmstate"],
        "no temporary file left"
    );

    let fresh = out_dir.join("new.vmstate");
    assert_exit(&save(&serve, &fresh, &[]), 1);
    assert!(!fresh.exists());
    assert_eq!(entries(&out_dir), ["helpers.vmstate"]);
}

#[test]
fn missing_helper_fails_save_after_the_timeout() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let serve = Serve::start(&dir, &["--id-list", "a,b"]);
    std::fs::write(root.join("a.state"), b"a").unwrap();
    let _a = Helper::file(&dir, "a", &root.join("a.state"));
    let target = root.join("out.vmstate");
    let out = save(&serve, &target, &["--timeout", "0.5"]);
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains("helper \"b\": not connected"), "{err}");
    assert!(err.contains("org.dbusvmstate.Error.NotConnected"), "{err}");
    assert!(!target.exists());
}

/// A stream that fails verification is rejected whole: no helper's state
/// changes.
#[test]
fn load_rejects_a_corrupt_stream_and_loads_nothing() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let mut bytes = native::encode(&[
        Record::new("a", b"new a".to_vec()),
        Record::new("b", b"new b".to_vec()),
    ])
    .unwrap();
    let last_chunk_byte = bytes.len() - 60;
    bytes[last_chunk_byte] ^= 0x01;
    let corrupt = root.join("corrupt.vmstate");
    std::fs::write(&corrupt, &bytes).unwrap();
    std::fs::write(root.join("a.state"), b"old a").unwrap();
    std::fs::write(root.join("b.state"), b"old b").unwrap();
    let serve = Serve::start(&dir, &["--id-list", "a,b"]);
    let _a = Helper::file(&dir, "a", &root.join("a.state"));
    let _b = Helper::file(&dir, "b", &root.join("b.state"));

    let out = load(&serve, &corrupt, &[]);
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains("org.dbusvmstate.Error.StreamRejected"),
        "{err}"
    );
    assert_eq!(std::fs::read(root.join("a.state")).unwrap(), b"old a");
    assert_eq!(std::fs::read(root.join("b.state")).unwrap(), b"old b");

    // Truncated: the end record is missing.
    let good = native::encode(&[
        Record::new("a", b"x".to_vec()),
        Record::new("b", b"y".to_vec()),
    ])
    .unwrap();
    let cut = root.join("cut.vmstate");
    std::fs::write(&cut, &good[..good.len() - 10]).unwrap();
    // Empty: named as inspect names it.
    let empty = root.join("empty.vmstate");
    std::fs::write(&empty, b"").unwrap();
    for (input, needle) in [
        (cut, "StreamRejected"),
        (empty, "not a state stream: the input is empty"),
    ] {
        let out = load(&serve, &input, &[]);
        assert_exit(&out, 1);
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{}: {err}", input.display());
        assert_eq!(std::fs::read(root.join("a.state")).unwrap(), b"old a");
    }
}

/// `helper --save-cmd/--load-cmd`: a program that can dump and restore
/// from a shell migrates with no D-Bus code.
#[test]
fn exec_adapter_migrates_a_commands_state() {
    let tmp = tmpdir();
    let root = tmp.path();
    let (src_dir, dst_dir) = (root.join("src"), root.join("dst"));
    let state = pattern(300_000, 3);
    std::fs::write(root.join("db.dump"), &state).unwrap();
    let src = Serve::start(&src_dir, &["--id-list", "db"]);
    let save_cmd = format!("cat {}", root.join("db.dump").display());
    let _s = Helper::start(&src_dir, "db", &["--save-cmd", &save_cmd]);
    let stream = root.join("db.vmstate");
    assert_exit(&save(&src, &stream, &[]), 0);

    let dst = Serve::start(&dst_dir, &["--id-list", "db"]);
    let restored = root.join("db.restored");
    let load_cmd = format!("cat > {}", restored.display());
    let _d = Helper::start(&dst_dir, "db", &["--load-cmd", &load_cmd]);
    assert_exit(&load(&dst, &stream, &[]), 0);
    assert_eq!(std::fs::read(&restored).unwrap(), state);
}

#[test]
fn failing_load_command_is_reported_with_its_exit_status() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let stream = root.join("x.vmstate");
    std::fs::write(
        &stream,
        native::encode(&[Record::new("db", b"s".to_vec())]).unwrap(),
    )
    .unwrap();
    let serve = Serve::start(&dir, &["--id-list", "db"]);
    let _h = Helper::start(&dir, "db", &["--load-cmd", "cat >/dev/null; exit 42"]);
    let out = load(&serve, &stream, &[]);
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains("helper \"db\"") && err.contains("exited with status 42"),
        "{err}"
    );
}

/// Another language's D-Bus library drives serve: GDBus from Python
/// (needs /usr/bin/python3 with python3-gi), passing a file descriptor to
/// Save and reading Status.
#[test]
fn gdbus_client_drives_serve() {
    const SCRIPT: &str = r#"
import os, sys
import gi
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib
control, out = sys.argv[1], sys.argv[2]
conn = Gio.DBusConnection.new_for_address_sync(
    "unix:path=" + control, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT, None, None)
def call(method, args, reply, fds=None):
    return conn.call_with_unix_fd_list_sync(
        None, "/org/dbusvmstate/Control1", "org.dbusvmstate.Control1", method,
        args, GLib.VariantType(reply), Gio.DBusCallFlags.NONE, -1, fds, None)[0]
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
report = call("Save", GLib.Variant("(ha{sv})", (0, {})), "(a{sv})",
              Gio.UnixFDList.new_from_array([fd]))[0]
print("saved", report["format"], report["stream_bytes"], report["helpers"][0][0])
for helper in call("Status", None, "(aa{sv})")[0]:
    print("status", helper["id"], helper["connected"], helper["last_save_bytes"])
try:
    call("Load", GLib.Variant("(ha{sv})", (0, {"format": GLib.Variant("s", "tar")})), "(a{sv})",
         Gio.UnixFDList.new_from_array([os.open(out, os.O_RDONLY)]))
except GLib.Error as e:
    print("error", Gio.DBusError.get_remote_error(e))
"#;
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    std::fs::write(root.join("a.state"), b"seen from python").unwrap();
    let serve = Serve::start(&dir, &["--id-list", "a"]);
    let _a = Helper::file(&dir, "a", &root.join("a.state"));
    let out_path = root.join("py.vmstate");
    let child = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            SCRIPT,
            &serve.control_arg(),
            out_path.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (python3-gi)");
    let out = wait_output(child);
    assert_exit(&out, 0);
    let len = std::fs::metadata(&out_path).unwrap().len();
    assert_eq!(
        text(&out.stdout),
        format!(
            "saved native {len} a\nstatus a True 16\n\
             error org.freedesktop.DBus.Error.InvalidArgs\n"
        )
    );
    let records =
        native::read_all(std::fs::File::open(&out_path).unwrap(), Limits::default()).unwrap();
    assert_eq!(records, [Record::new("a", b"seen from python".to_vec())]);
}
