//! The coordinator: listens on one socket per helper, accepts each helper as
//! the server side of a peer-to-peer D-Bus connection, and calls `Save` and
//! `Load` on all of them concurrently.
//!
//! ```no_run
//! # async fn example() -> dbus_vmstate::Result<()> {
//! use dbus_vmstate::coordinator;
//!
//! let coordinator = coordinator::Builder::new()
//!     .socket_dir("/run/vm0/vmstate", ["slirp", "tpm"])
//!     .optional("tpm")
//!     .bind()?;
//! // ... helpers connect to /run/vm0/vmstate/slirp.sock and tpm.sock ...
//! let report = coordinator.save_to_path("/var/lib/vm0/helpers.vmstate").await?;
//! println!("saved {} helpers", report.helpers.len());
//! coordinator.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The pieces: a [`Builder`] names the helpers ([`HelperSpec`]) and the
//! limits, and binds a [`Coordinator`], whose [`save`](Coordinator::save)
//! and [`load`](Coordinator::load) return a [`SaveReport`] or a
//! [`LoadReport`] made of one [`HelperReport`] per helper (its
//! [`Transfer`] and [`Mode`]) and the optional helpers [`Skipped`];
//! [`status`](Coordinator::status) returns a [`HelperStatus`] per helper.
//! Each socket is bound 0600 (a stale socket replaced, a live listener
//! refused) and removed on shutdown if it is still the coordinator's.
//!
//! # Loading
//!
//! No helper completes a load from a stream that fails verification (the
//! format, every checksum, `STREAM_END`, every required helper present,
//! no unknown or duplicate Id, every state of a helper without
//! `org.dbusvmstate.Stream1` within one D-Bus message), and yet the
//! states are not held in memory: one *verifying pass* reads the stream
//! and hands each streaming helper its chunks as they are checked,
//! through `LoadFd`, all helpers at once, while it collects each plain
//! helper's state for one `Load` message. What completes a load is held
//! back until the pass has verified the whole stream:
//!
//! - each streaming helper's **commit**: its last byte, when `LoadFd`
//!   announced the state's size (a helper completes only on end-of-file
//!   after exactly that size), or the trailer of the call's seal, when the
//!   sealed `LoadFd` of `org.dbusvmstate.SealedLoad1` started the load
//!   before the size was known (a helper completes only on that trailer);
//!   either way a load the coordinator aborts ends short
//!   (`protocol/README.md`, `LoadFd`);
//! - each plain helper's `Load` call, made only then.
//!
//! On any failure (a bad record, an input that ends or fails, a state of
//! another size than announced) every streaming helper's socket closes
//! short, no plain `Load` is made, and each helper keeps its old state. A
//! helper's own failure (its `Load` fails) does not stop the others.
//!
//! A native stream tells a state's size only in the state's `END`
//! record, after its chunks, so the input decides the path:
//!
//! - A *seekable* input ([`Coordinator::load_seekable`],
//!   [`Coordinator::load_from_path`] on a regular file, a regular file
//!   passed to the control interface) is first *indexed*: its record
//!   headers and its small `BEGIN` and `END` records are read, seeking
//!   over every chunk's payload (12 bytes read per MiB of state), which
//!   gives every Id and size and fails at once on an unknown Id, a
//!   duplicate, a broken `BEGIN` or `END` record or a truncated stream,
//!   before any helper is called. Then the verifying pass reads the input
//!   once, from where it stood, announcing each size in `LoadFd`, and
//!   nothing is spooled.
//! - Any other input ([`Coordinator::load`], a pipe, a FIFO, a socket) is
//!   loaded *live* when every connected streaming helper serves the
//!   sealed load (this crate's helpers do): after waiting for the
//!   required helpers, the verifying pass reads the input as it arrives,
//!   a streaming helper is called when its state begins and receives it
//!   chunk by chunk, and an unknown Id fails the load where it is read.
//!   So a load overlaps the transfer and the source's save, and nothing
//!   is spooled. Every connected helper takes part; one whose state the
//!   stream does not hold is not called (and the load fails if it is
//!   required).
//! - Any other input with a streaming helper that lacks the sealed load
//!   is verified while it is copied to a spool (memory up to 8 MiB, then
//!   an unlinked temporary file in `$TMPDIR`), so that no helper is called
//!   before every size is known; the verifying pass then reads the spool
//!   as it would a seekable input.
//! - A QEMU payload (at most 1 MiB per helper) is decoded and verified
//!   into memory, then loaded.
//! - A native stream of format version 2 (compressed, encrypted:
//!   [`Coordinator::save_with`], [`Coordinator::load_with`]) is decoded
//!   by one reader as it is read (every record's checksum, then its
//!   authentication with the key of [`ReadOptions`](crate::stream::native::ReadOptions),
//!   then its decompression within the caps), read once: it takes the
//!   live path, which loads the decoded records as they come (or the
//!   spool, which gets the version 1 stream of the same records),
//!   seekable or not, and the hold-back rule above is
//!   unchanged, so nothing of a record reaches a helper before the record
//!   authenticated and no helper completes a load before the whole stream
//!   did. A key, the wrong key or an unencrypted stream given a key fail
//!   the load before any call.
//!
//! On every path loading overlaps the verifying pass, and a slow helper
//! holds the reading back once its queue is full.
//!
//! **Memory.** Plain states are held whole (one D-Bus message each), so
//! they count against the coordinator's budget
//! ([`Builder::memory_limit`], shared by every save and load). A plain
//! `Load` takes three times its state's size (the state and the two
//! copies zbus serialises the message into), at most the whole budget:
//! the verifying pass collects a plain state in memory while that room is
//! free beside the states held, and writes any other to an unlinked
//! temporary file (`$TMPDIR`, else `/var/tmp`, seldom a tmpfs, unlike
//! `/tmp`); each plain `Load` waits until its room is free, reads a
//! spilled state back, and gives the room back when it returns. A plain
//! state larger than the budget fails the load before any call, naming
//! its helper (on a live load, as soon as it has grown past the budget
//! or one message). A plain `Save` likewise waits for room before its call
//! (its helper's last saved size, or the largest reply when none is
//! known, at most the budget) and holds the reply's size until the writer
//! has written it.
//!
//! # QEMU
//!
//! With [`Builder::qemu_socket`], the coordinator also listens for QEMU:
//! an unmodified QEMU started with
//! `-object dbus-vmstate,id=dv0,addr=unix:path=PATH,id-list=...` connects
//! there once, takes the coordinator for its D-Bus bus, and saves or loads
//! the helpers connected on their own sockets whenever it migrates, with
//! no dbus-daemon. The coordinator answers QEMU's bus calls itself and
//! carries only `org.qemu.VMState1` `Save` and `Load` to a helper, over the
//! helper's own connection (plain or streaming, as for any save), and the
//! `Id` it verified when the helper connected. At QEMU's first `Save` it
//! saves every helper QEMU is about to save at once, so that QEMU's
//! one-after-another calls cost the slowest helper's time rather than the
//! sum. `protocol/qemu-front-door.md` is the contract: every call answered,
//! how the helpers to save are told, the errors QEMU gets (each naming the
//! helper), and why. [`Coordinator::qemu_status`] shows QEMU's connection
//! and its last save and load.
//!
//! A coordinator runs one save or load at a time, whoever asks: this
//! handle, the control socket or QEMU. Whoever comes second waits up to the
//! connect timeout, then fails with [`Error::Busy`](crate::Error::Busy).
//!
//! # Concurrency
//!
//! The coordinator's futures run on whatever executor awaits them; what
//! blocks runs on threads. Here is everything that runs, what it owns, how
//! the pieces talk and how they stop.
//!
//! **Tasks** (spawned on the crate's runtime edge, `rt`, async-std's
//! executor today):
//!
//! - An *accept task* per helper socket, from [`Builder::bind`] until
//!   shutdown, which aborts it. It owns the listening socket and spawns an
//!   admit task per connection.
//! - An *admit task* per accepted connection: the D-Bus handshake, the
//!   peer's uid and `Id` (all within the handshake timeout), the
//!   introspection that tells whether it streams; then it installs the
//!   connection in the helper's slot (replacing an older one) and waits
//!   for the connection to close, when it empties the slot if that still
//!   holds this connection. A connection turned away leaves its reason in
//!   [`HelperStatus::last_rejection`].
//! - With a front door for QEMU: its *accept task*, aborted at shutdown
//!   like the others, and a task per QEMU connection that answers its
//!   calls in order until the connection closes (shutdown closes it). Each
//!   of QEMU's `Load` calls runs as a task of its own, which answers QEMU
//!   when the helper is done, and QEMU's first `Save` of a round starts a
//!   *batch* task that saves every helper QEMU is about to save at once
//!   and hands each result to the call waiting for it through a oneshot
//!   channel. That first `Save` waits in a task of its own; QEMU's later
//!   ones come when the batch is done, and the connection's task answers
//!   them from the results at once. The batch, and a round of QEMU's loads, hold the
//!   coordinator's one operation (an async mutex) while they run.
//! - Short-lived ones: closing a connection that nobody holds any more, and
//!   noting when a bus-style helper's `Hello` reply has gone out.
//!
//! A save or a load has no task per helper: its own future makes every
//! helper's calls, all at once, and holds each helper's connection for its
//! duration, so a helper that reconnects meanwhile does not close the
//! connection under a running call. Its blocking work goes to threads.
//!
//! **Threads:**
//!
//! - zbus's `zruntime` thread, one per process (with its small `zruntime
//!   blocking` pool): all D-Bus I/O of every helper connection, including
//!   (de)serialising the plain states, one message at a time, and the
//!   `org.freedesktop.DBus` answers each connection serves to bus-style
//!   helpers.
//! - The *writer thread* (`vmstate-writer`), one per save: owns the output,
//!   the stream encoder and the temporary files staging optional streaming
//!   helpers' states; the only code that writes the stream.
//! - A compressing save's *compression threads* (`vmstate-zstd-N`, one per
//!   core, at most 8, or [`WriteOptions::compress_threads`](crate::stream::native::WriteOptions::compress_threads)),
//!   owned by the writer thread's stream encoder
//!   ([`native::Writer`](crate::stream::native::Writer)): each compresses
//!   the chunks handed to it in turn, at most two at a time (a copy of
//!   each, and room for its compressed form: 4 MiB per thread), and the
//!   writer writes the results in order. They end with the save.
//! - The *blocking pool* (`rt::spawn_blocking`; async-std's, up to 500
//!   threads) runs the rest:
//!   - a *reader* per streaming helper during a save, owning the
//!     coordinator's end of that helper's socket pair: it fills pool
//!     buffers from it and sends them to the writer;
//!   - a load's *index* of a seekable input, or *first read* of another
//!     into its spool, owning the input (and the spool);
//!   - a load's *verifying pass*, owning the input (or spool) and the
//!     sending side of every helper's route;
//!   - a *feeder* per streaming helper during a load, owning the
//!     coordinator's end of that helper's socket pair: it writes the chunks
//!     handed to it, holding back the commit (the last byte of an announced
//!     load, the trailer of a sealed one) until the whole stream has
//!     verified ([see](#loading)); before it, a wait for the state's first
//!     chunk on a live load, and for an empty state of an announced load,
//!     which has no last byte, a wait for the whole stream;
//!   - reading a spilled plain state back from its temporary file before
//!     its `Load`;
//!   - joining the writer thread, and the sync and rename of
//!     [`Coordinator::save_to_path`].
//!
//! **Channels and their bounds:**
//!
//! - Save, every helper to the writer: one `std::sync::mpsc` channel of
//!   messages (a streamed state's begin, chunks, end or abort; a whole plain
//!   reply; finish). It is unbounded, but a chunk is a buffer from a pool of
//!   one buffer per streaming helper plus 4, each one stream chunk
//!   (`stream::native::CHUNK_BYTES`), so a reader waits for a buffer while
//!   the writer is behind; a plain reply is one per plain helper, at most
//!   one D-Bus message.
//! - Load, the verifying pass to each feeder: a `sync_channel` of 4
//!   chunks, in the buffers the stream reader read them into, from a pool
//!   of 5 buffers per streaming helper plus 2, so a slow helper holds up
//!   the others (and the reading) only once its queue is full; the finish
//!   message, which releases the commit, is sent only after `STREAM_END`
//!   verified. To each plain helper: a oneshot
//!   channel with its whole state (at most one D-Bus message, in memory or
//!   spilled, see *Memory* above), sent only after `STREAM_END` verified,
//!   when its `Load` starts; on failure the sender is dropped and no
//!   `Load` is made.
//! - Flags: `stop`, raised by the writer thread when the output fails, which
//!   makes every reader give up; `cancelled`, raised for one reader when its
//!   helper's save is given up.
//! - The memory budget of plain states: a counter under a mutex held for
//!   single updates, and an event that wakes every save or load waiting
//!   for room whenever room is given back (a reply written, a `Load`
//!   returned, a state dropped with its failed load).
//! - Each helper's slot (its connection and last transfers) is a mutex held
//!   for single assignments only; an event wakes whoever waits for helpers
//!   whenever one connects or disconnects, and on shutdown.
//!
//! **How a cancellation travels:**
//!
//! - *A save future dropped:* each streaming helper's socket pair is shut
//!   down and its reader told to give up; the helper's writes fail. Plain
//!   `Save` calls are abandoned (their replies are dropped when they
//!   come). The writer, left without senders and without a finish message,
//!   stops without writing the end record, so the partial stream is
//!   rejected by every reader.
//! - *A load future dropped:* no further `Load` is made, and the load is
//!   marked abandoned. The passes and feeders already running are blocking
//!   work that goes on, but a verifying pass under way reads to its end
//!   and then finishes no route: every streaming helper already called
//!   sees its load end short, and no helper commits a state behind the back
//!   of whatever runs next.
//! - *A call timing out* (for a streaming helper of an announced load the
//!   call timeout covers the whole transfer; for a sealed load, whose state
//!   comes at the pace of the stream, each write into the helper's socket
//!   and then the reply after the trailer): the helper fails with
//!   [`Error::Timeout`](crate::Error::Timeout), and a streaming helper's
//!   socket pair is shut down, which ends its reader or feeder.
//! - *The output failing:* the writer raises `stop`, keeps draining its
//!   channel so no producer waits for a buffer, and reports the first error;
//!   every reader gives up and closes its helper's socket.
//! - *A helper disconnecting:* its admit task empties its slot, so a save
//!   or load that has not started yet waits for it (required) or skips it
//!   (optional); a call in flight on it fails (an
//!   [`Error::Call`](crate::Error::Call), at the latest the call timeout).
//!   A streaming helper's socket pair closes with it: its reader sees the
//!   end of its data, its feeder a failed write, after which the feeder
//!   drains its queue so the verifying pass never waits for it.
//! - *[`Coordinator::shutdown`]:* aborts the accept tasks, takes every
//!   connection out of its slot and closes it (calls in flight fail as
//!   above), then removes the socket files. Admit tasks still in a
//!   handshake close their connection when it finishes. A save or load
//!   started afterwards waits the connect timeout for helpers that can no
//!   longer connect, and fails with
//!   [`Error::NotConnected`](crate::Error::NotConnected). Dropping the
//!   coordinator does the same as shutdown, closing the connections in a
//!   task of its own.
//! - *The control server* ([`crate::control::Server`]) adds an accept task,
//!   a task per control connection, and at most one operation task (a save
//!   or load), which answers its caller through a oneshot channel.
//!   [`Server::shutdown`](crate::control::Server::shutdown) cancels that
//!   task (a dropped save or load future, as above; the passed descriptor
//!   is cut off too, which stops a save's output and a load reading it,
//!   though not a verifying pass over a spool), closes the control
//!   connections and then calls [`Coordinator::shutdown`].

mod accept;
mod budget;
mod builder;
mod bus_shim;
mod call;
mod handle;
mod load;
mod peer;
pub(crate) mod policy;
mod qemu;
mod report;
mod round;
mod save;
mod shared;
pub(crate) mod socket;
mod transfer;

pub use budget::DEFAULT_MEMORY_LIMIT_BYTES;
pub use builder::{Builder, HelperSpec};
pub use handle::Coordinator;
pub use report::{
    HelperReport, HelperStatus, LoadReport, QemuRound, QemuStatus, SaveReport, Skipped, Transfer,
};
pub use transfer::Mode;

pub(crate) use builder::Config;
pub(crate) use peer::{Peer, PeerConn};
pub(crate) use shared::Inner;
