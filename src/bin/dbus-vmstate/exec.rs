//! The exec adapter: a helper whose state is what a shell command dumps
//! and restores, for programs that know nothing of D-Bus.

use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use dbus_vmstate::helper::{copy_blocks, BoxError, State, StreamIn, StreamOut};

/// The shell that runs the commands.
const SHELL: &str = "/bin/sh";

/// Runs `--save-cmd` for `Save` (its stdout is the state) and `--load-cmd`
/// for `Load` (the state goes to its stdin).
#[derive(Debug, Clone)]
pub struct ExecState {
    id: String,
    save_cmd: Option<String>,
    load_cmd: Option<String>,
}

impl ExecState {
    /// Helper `id` running these commands.
    pub fn new(id: String, save_cmd: Option<String>, load_cmd: Option<String>) -> Self {
        ExecState {
            id,
            save_cmd,
            load_cmd,
        }
    }
}

fn shell(cmd: &str) -> Command {
    let mut c = Command::new(SHELL);
    c.arg("-c").arg(cmd);
    c
}

/// `exited with status 3`, `was killed by signal 9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

impl State for ExecState {
    fn id(&self) -> &str {
        &self.id
    }

    // The command's output is the state, of any size: both pairs go through
    // the streaming methods.
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        let mut state = Vec::new();
        self.save_to(&mut state)?;
        Ok(state)
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        self.load_from(&mut data.as_slice())
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        self.run_save(|stdout| copy_blocks(stdout, out))
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        self.run_load(|stdin| copy_blocks(input, stdin))
    }

    // The command's stdout is spliced into the coordinator's socket, and
    // the socket into its stdin: the bytes never enter this process.
    fn save_to_stream(&self, out: &mut StreamOut) -> Result<(), BoxError> {
        self.run_save(|stdout| out.copy_from(stdout))
    }

    fn load_from_stream(&self, input: &mut StreamIn) -> Result<(), BoxError> {
        self.run_load(|stdin| input.copy_to(stdin))
    }
}

impl ExecState {
    /// Runs `--save-cmd`, with `copy` moving its stdout to the state's
    /// destination.
    fn run_save(
        &self,
        copy: impl FnOnce(&mut ChildStdout) -> io::Result<u64>,
    ) -> Result<(), BoxError> {
        let cmd = self
            .save_cmd
            .as_deref()
            .ok_or("this helper has no --save-cmd")?;
        let mut child = shell(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run save command {cmd:?}: {e}"))?;
        let copied = match child.stdout.take() {
            Some(mut stdout) => copy(&mut stdout),
            None => Err(io::Error::other("no pipe to the command's stdout")),
        };
        let status = child
            .wait()
            .map_err(|e| format!("cannot wait for save command {cmd:?}: {e}"))?;
        if !status.success() {
            return Err(format!("save command {cmd:?} {}", describe(status)).into());
        }
        copied.map_err(|e| format!("cannot copy the output of save command {cmd:?}: {e}"))?;
        Ok(())
    }

    /// Runs `--load-cmd`, with `copy` moving the state into its stdin.
    fn run_load(
        &self,
        copy: impl FnOnce(&mut ChildStdin) -> io::Result<u64>,
    ) -> Result<(), BoxError> {
        let cmd = self
            .load_cmd
            .as_deref()
            .ok_or("this helper has no --load-cmd")?;
        let mut child = shell(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run load command {cmd:?}: {e}"))?;
        let copied = match child.stdin.take() {
            // Dropping stdin at the end of the arm closes the pipe, so the
            // command sees the end of the state.
            Some(mut stdin) => copy(&mut stdin),
            None => Err(io::Error::other("no pipe to the command's stdin")),
        };
        let status = child
            .wait()
            .map_err(|e| format!("cannot wait for load command {cmd:?}: {e}"))?;
        if !status.success() {
            return Err(format!("load command {cmd:?} {}", describe(status)).into());
        }
        match copied {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                Err(format!("load command {cmd:?} exited before reading the whole state").into())
            }
            Err(e) => Err(format!("cannot write the state to load command {cmd:?}: {e}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(save: &str, load: &str) -> ExecState {
        ExecState::new("a".into(), Some(save.into()), Some(load.into()))
    }

    #[test]
    fn save_returns_stdout_and_load_feeds_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        let s = state(
            "printf 'state\\0bytes'",
            &format!("cat > {}", file.display()),
        );
        assert_eq!(s.save().unwrap(), b"state\0bytes");
        s.load(b"restored\xff".to_vec()).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"restored\xff");
    }

    #[test]
    fn failing_commands_name_their_exit_status() {
        let s = state("echo partial; exit 3", "cat >/dev/null; exit 4");
        let e = s.save().unwrap_err().to_string();
        assert!(e.contains("exited with status 3"), "{e}");
        let e = s.load(b"x".to_vec()).unwrap_err().to_string();
        assert!(e.contains("exited with status 4"), "{e}");
    }

    #[test]
    fn load_command_that_reads_nothing_fails() {
        let s = state("true", "exit 0");
        let e = s.load(vec![0u8; 4 << 20]).unwrap_err().to_string();
        assert!(e.contains("before reading the whole state"), "{e}");
    }

    #[test]
    fn missing_command_is_named() {
        let s = ExecState::new("a".into(), None, Some("cat".into()));
        assert!(s.save().unwrap_err().to_string().contains("--save-cmd"));
    }
}
