//! The scripted fake helper every test file uses: a [`State`] built on the
//! library, told what each `Save` and `Load` does, counting the calls it
//! sees. For misbehaviour the library's helper side never produces (a
//! crash mid-call, an invalid Id, a wrong reply type, a lying stream), see
//! [`super::raw`].

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dbus_vmstate::helper::{self, BoxError, State};

use super::rt;

/// What one `Save` or `Load` call of a [`Fake`] does. Byte counts apply
/// to the streaming path (`save_to`/`load_from`); the plain path moves
/// the whole state or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Moves the whole state.
    Whole,
    /// Fails with this message (a load reads its input first).
    Fail(String),
    /// Moves this many bytes, then fails with the message.
    FailAfter(usize, String),
    /// Never answers (blocks its thread long past any test).
    Hang,
    /// Moves this many bytes, then never answers.
    HangAfter(usize),
    /// Load only: reads this many bytes, keeps them and reports success.
    StopAfter(usize),
    /// Waits until [`Fake::release`] is called, then moves the whole state.
    Held,
}

/// An in-memory helper whose behaviour is scripted, built as
/// `Fake::new("b", data).fail_save("disk on fire")`; the script can also
/// change while it is served ([`Fake::set_save`], [`Fake::set_load`]).
#[derive(Debug)]
pub struct Fake {
    id: String,
    data: Mutex<Vec<u8>>,
    save: Mutex<Step>,
    load: Mutex<Step>,
    streaming: AtomicBool,
    sealed_loads: AtomicBool,
    saves: AtomicUsize,
    loads: AtomicUsize,
    write_failed: AtomicBool,
    released: (Mutex<bool>, Condvar),
}

impl Fake {
    /// A helper `id` holding `data` that saves and loads it whole, and
    /// serves the streaming extension.
    pub fn new(id: &str, data: Vec<u8>) -> Arc<Fake> {
        Arc::new(Fake {
            id: id.to_string(),
            data: Mutex::new(data),
            save: Mutex::new(Step::Whole),
            load: Mutex::new(Step::Whole),
            streaming: AtomicBool::new(true),
            sealed_loads: AtomicBool::new(true),
            saves: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            write_failed: AtomicBool::new(false),
            released: (Mutex::new(false), Condvar::new()),
        })
    }

    /// Every `Save` does `step`.
    pub fn set_save(&self, step: Step) {
        *self.save.lock().unwrap() = step;
    }

    /// Every `Load` does `step`.
    pub fn set_load(&self, step: Step) {
        *self.load.lock().unwrap() = step;
    }

    /// `Save` fails with `msg`.
    pub fn fail_save(self: Arc<Self>, msg: &str) -> Arc<Self> {
        self.set_save(Step::Fail(msg.to_string()));
        self
    }

    /// `Load` fails with `msg`.
    pub fn fail_load(self: Arc<Self>, msg: &str) -> Arc<Self> {
        self.set_load(Step::Fail(msg.to_string()));
        self
    }

    /// `Save` never answers.
    pub fn hang_save(self: Arc<Self>) -> Arc<Self> {
        self.set_save(Step::Hang);
        self
    }

    /// `Load` never answers.
    pub fn hang_load(self: Arc<Self>) -> Arc<Self> {
        self.set_load(Step::Hang);
        self
    }

    /// `Save` does `step`.
    pub fn save_does(self: Arc<Self>, step: Step) -> Arc<Self> {
        self.set_save(step);
        self
    }

    /// `Load` does `step`.
    pub fn load_does(self: Arc<Self>, step: Step) -> Arc<Self> {
        self.set_load(step);
        self
    }

    /// Serves only QEMU's `org.qemu.VMState1`, not the streaming extension.
    pub fn plain(self: Arc<Self>) -> Arc<Self> {
        self.streaming.store(false, Ordering::SeqCst);
        self
    }

    /// Serves the streaming extension without `org.dbusvmstate.SealedLoad1`,
    /// as a helper of an earlier release does.
    pub fn unsealed(self: Arc<Self>) -> Arc<Self> {
        self.sealed_loads.store(false, Ordering::SeqCst);
        self
    }

    /// Serves this helper on `socket` in the background (plain or
    /// streaming as scripted); the task ends when the coordinator closes
    /// the connection.
    pub fn spawn(self: &Arc<Self>, socket: impl AsRef<Path>) -> rt::Task<dbus_vmstate::Result<()>> {
        let socket = socket.as_ref().to_path_buf();
        let options = self.options();
        let state: Arc<dyn State> = self.clone();
        rt::spawn(async move { helper::serve(socket, state, options).await })
    }

    /// [`Fake::spawn`] on its own socket, `dir/ID.sock`.
    pub fn spawn_in(self: &Arc<Self>, dir: &Path) -> rt::Task<dbus_vmstate::Result<()>> {
        self.spawn(super::sock(dir, &self.id))
    }

    /// The options it is served with.
    pub fn options(&self) -> helper::Options {
        helper::Options::default()
            .connect_timeout(Duration::from_secs(10))
            .streaming(self.streaming.load(Ordering::SeqCst))
            .sealed_loads(self.sealed_loads.load(Ordering::SeqCst))
    }

    /// The state it holds now.
    pub fn data(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    /// Replaces the state it holds.
    pub fn set_data(&self, data: Vec<u8>) {
        *self.data.lock().unwrap() = data;
    }

    /// `Save` calls seen (either path).
    pub fn saves(&self) -> usize {
        self.saves.load(Ordering::SeqCst)
    }

    /// `Load` calls seen (either path).
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// Lets every [`Step::Held`] call go on, now and from now on.
    pub fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }

    /// Blocks a [`Step::Held`] call until [`Fake::release`].
    fn wait_released(&self) {
        let mut go = self.released.0.lock().unwrap();
        while !*go {
            go = self.released.1.wait(go).unwrap();
        }
    }

    /// Whether writing its state failed (the coordinator closed its end).
    pub fn write_failed(&self) -> bool {
        self.write_failed.load(Ordering::SeqCst)
    }

    fn save_step(&self) -> Step {
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.save.lock().unwrap().clone()
    }

    fn load_step(&self) -> Step {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.load.lock().unwrap().clone()
    }

    fn write(&self, out: &mut dyn Write, bytes: &[u8]) -> Result<(), BoxError> {
        out.write_all(bytes).map_err(|e| {
            self.write_failed.store(true, Ordering::SeqCst);
            e.into()
        })
    }
}

/// Blocks this (blocking-pool) thread long past any test.
fn hang() -> BoxError {
    std::thread::sleep(Duration::from_secs(3600));
    "woke up".into()
}

impl State for Fake {
    fn id(&self) -> &str {
        &self.id
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        match self.save_step() {
            Step::Whole | Step::StopAfter(_) => Ok(self.data()),
            Step::Held => {
                self.wait_released();
                Ok(self.data())
            }
            Step::Fail(msg) | Step::FailAfter(_, msg) => Err(msg.into()),
            Step::Hang | Step::HangAfter(_) => Err(hang()),
        }
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        match self.load_step() {
            Step::Whole | Step::StopAfter(_) => {
                self.set_data(data);
                Ok(())
            }
            Step::Held => {
                self.wait_released();
                self.set_data(data);
                Ok(())
            }
            Step::Fail(msg) | Step::FailAfter(_, msg) => Err(msg.into()),
            Step::Hang | Step::HangAfter(_) => Err(hang()),
        }
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        let data = self.data();
        match self.save_step() {
            Step::Whole | Step::StopAfter(_) => self.write(out, &data),
            Step::Held => {
                self.wait_released();
                self.write(out, &data)
            }
            Step::Fail(msg) => Err(msg.into()),
            Step::FailAfter(n, msg) => {
                self.write(out, &data[..n])?;
                Err(msg.into())
            }
            Step::Hang => Err(hang()),
            Step::HangAfter(n) => {
                self.write(out, &data[..n])?;
                Err(hang())
            }
        }
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        let mut data = Vec::new();
        match self.load_step() {
            Step::Whole => {
                input.read_to_end(&mut data)?;
            }
            Step::Held => {
                self.wait_released();
                input.read_to_end(&mut data)?;
            }
            Step::Fail(msg) => {
                input.read_to_end(&mut data)?;
                return Err(msg.into());
            }
            Step::FailAfter(n, msg) => {
                input.take(n as u64).read_to_end(&mut data)?;
                return Err(msg.into());
            }
            Step::Hang => {
                input.read_to_end(&mut data)?;
                return Err(hang());
            }
            Step::HangAfter(n) => {
                input.take(n as u64).read_to_end(&mut data)?;
                return Err(hang());
            }
            Step::StopAfter(n) => {
                input.take(n as u64).read_to_end(&mut data)?;
            }
        }
        self.set_data(data);
        Ok(())
    }
}
