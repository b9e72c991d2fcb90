//! `dbus-vmstate serve`: a coordinator process driven over its control
//! socket.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_signal::Signal;
use dbus_vmstate::control::{self, Server};
use dbus_vmstate::coordinator;
use futures::future::{self, Either};
use futures::StreamExt;

use crate::activation;
use crate::cli::ServeArgs;
use crate::exit::{self, Usage};
use crate::interrupt;
use crate::output;

/// How long a clean stop may take before the process ends anyway.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Mode of a socket directory `serve` creates.
const DIR_MODE: u32 = 0o700;

/// The sockets a service manager passed, sorted by use.
#[derive(Default)]
struct Passed {
    control: Option<UnixListener>,
    qemu: Option<UnixListener>,
    helpers: Vec<(String, UnixListener)>,
}

/// The fd name of a socket-activated QEMU socket
/// (`FileDescriptorName=qemu`).
const QEMU_ACTIVATION_NAME: &str = "qemu";

/// Sorts the activated sockets: `control`, `qemu`, or a helper Id from the
/// list (a helper Id wins over `qemu`).
fn sort_passed(sockets: Vec<activation::Socket>, ids: &[String]) -> anyhow::Result<Passed> {
    let mut passed = Passed::default();
    for socket in sockets {
        if socket.name == QEMU_ACTIVATION_NAME && !ids.contains(&socket.name) {
            if passed.qemu.is_some() {
                return Err(Usage("two QEMU sockets were passed (LISTEN_FDNAMES)".into()).into());
            }
            passed.qemu = Some(socket.listener);
        } else if socket.name == control::ACTIVATION_NAME {
            if passed.control.is_some() {
                return Err(
                    Usage("two control sockets were passed (LISTEN_FDNAMES)".into()).into(),
                );
            }
            passed.control = Some(socket.listener);
        } else if ids.contains(&socket.name) {
            passed.helpers.push((socket.name, socket.listener));
        } else {
            return Err(Usage(format!(
                "passed socket {} is named {:?}, which is neither \"control\", \"qemu\" nor a helper Id of --id-list \
                 (set FileDescriptorName= in the socket unit)",
                socket.fd, socket.name
            ))
            .into());
        }
    }
    Ok(passed)
}

/// Creates `dir` (mode 0700, parents too) if it does not exist.
fn create_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o022 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    "the socket directory is writable by others; 0700 is recommended"
                );
            }
            Ok(())
        }
        Ok(_) => Err(Usage(format!("{} exists and is not a directory", dir.display())).into()),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display())),
    }
}

/// Tells a service manager (`NOTIFY_SOCKET`) about a state change.
fn notify(state: &str) {
    match activation::notify(state) {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify the service manager"),
    }
}

/// `dbus-vmstate serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    if let Some(id) = args.id_list.iter().find(|id| id.contains('/')) {
        return Err(Usage(format!(
            "helper Id {id:?} cannot name a socket file in --socket-dir (it contains '/')"
        ))
        .into());
    }
    // First: it changes the environment, which must happen before threads.
    let passed = sort_passed(activation::take()?, &args.id_list)?;
    let control_path: PathBuf = args
        .control
        .clone()
        .unwrap_or_else(|| args.socket_dir.join(control::DEFAULT_SOCKET_NAME));
    if args.id_list.iter().any(|id| id == control::ACTIVATION_NAME)
        && args.control.is_none()
        && passed.control.is_none()
    {
        return Err(Usage(format!(
            "helper Id \"control\" would share {} with the control socket; give --control PATH",
            control_path.display()
        ))
        .into());
    }
    create_dir(&args.socket_dir)?;
    let builder = builder(&args);
    futures::executor::block_on(serve(builder, passed, &control_path))?;
    Ok(exit::OK)
}

/// The coordinator the arguments describe.
fn builder(args: &ServeArgs) -> coordinator::Builder {
    let mut builder = coordinator::Builder::new()
        .socket_dir(&args.socket_dir, args.id_list.iter().cloned())
        .call_timeout(args.timeout)
        .connect_timeout(args.connect_timeout)
        .memory_limit(args.memory_limit);
    for id in &args.optional {
        builder = builder.optional(id.clone());
    }
    for uid in &args.allow_uid {
        builder = builder.allow_uid(*uid);
    }
    if let Some(path) = &args.qemu_socket {
        builder = builder.qemu_socket(path);
    }
    builder
}

/// Binds every socket, serves until SIGTERM or SIGINT, and stops cleanly.
async fn serve(
    builder: coordinator::Builder,
    passed: Passed,
    control_path: &Path,
) -> anyhow::Result<()> {
    // Caught from before the first socket exists, so that a stop request
    // can never leave socket files behind.
    let mut signals =
        interrupt::catch(&[Signal::Term, Signal::Int]).context("cannot install signal handlers")?;
    let coordinator = match passed.qemu {
        Some(qemu) => builder.bind_with_qemu(passed.helpers, qemu)?,
        None => builder.bind_with(passed.helpers)?,
    };
    let sockets: Vec<String> = coordinator
        .helpers()
        .map(|h| format!("{}={}", h.id, h.socket.display()))
        .collect();
    let qemu = coordinator
        .qemu_status()
        .map(|q| format!(" qemu {}", q.socket.display()))
        .unwrap_or_default();
    let server = match passed.control {
        Some(listener) => Server::from_listener(coordinator, listener)?,
        None => Server::bind(coordinator, control_path)?,
    };
    let shown = server
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(passed, unnamed)".to_string());
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ready: control {shown} helpers {}{qemu}",
            sockets.join(" ")
        );
        let _ = out.flush();
    }
    tracing::info!(control = %shown, "serving {}", output::count(sockets.len() as u64, "helper", "helpers"));
    notify("READY=1");

    let signal = signals.next().await;
    tracing::info!("{}, stopping", describe(signal));
    notify("STOPPING=1");
    let stop = Box::pin(server.shutdown());
    if let Either::Right(_) = future::select(stop, async_io::Timer::after(SHUTDOWN_LIMIT)).await {
        tracing::warn!("clean stop took over {SHUTDOWN_LIMIT:?}; exiting anyway");
    }
    Ok(())
}

fn describe(signal: Option<std::io::Result<Signal>>) -> String {
    match signal {
        Some(Ok(Signal::Term)) => "SIGTERM received".into(),
        Some(Ok(Signal::Int)) => "SIGINT received".into(),
        Some(Ok(other)) => format!("{other:?} received"),
        Some(Err(e)) => format!("signal handling failed ({e})"),
        None => "signal handling ended".into(),
    }
}
