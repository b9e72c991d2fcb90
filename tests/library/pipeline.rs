//! The pipelined load: every state streams to its helper while the one
//! verifying pass reads the stream, and no helper completes a load before
//! all of it has verified. Failures at the very end, unknown Ids and a
//! source dying mid-stream, on helpers of every kind (streaming and plain,
//! peer to peer and bus-style).

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;
use dbus_vmstate::coordinator::{Coordinator, Mode};
use dbus_vmstate::helper::{self, State};
use dbus_vmstate::stream::{self, native, Record};
use dbus_vmstate::Error;

/// Size of each helper's state: several chunks, so that loads are well
/// under way when the stream fails.
const STATE_BYTES: usize = (3 << 20) + 17;

/// A coordinator for `ids`, each served by a [`Fake`]: names starting
/// with `s` stream, with `p` are plain; a `b` after that connects
/// bus-style (`Hello`, then the well-known name) instead of peer to peer;
/// a `u` there streams without `org.dbusvmstate.SealedLoad1`, as a helper
/// of an earlier release; a name ending in `0` holds an empty state.
async fn helpers(dir: &std::path::Path, ids: &[&str]) -> (Coordinator, Vec<Arc<Fake>>) {
    let c = builder(dir, ids).bind().unwrap();
    let mut fakes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let len = if id.ends_with('0') { 0 } else { STATE_BYTES };
        let fake = Fake::new(id, pattern(len, i as u8));
        let fake = if id.starts_with('p') {
            fake.plain()
        } else if id[1..].starts_with('u') {
            fake.unsealed()
        } else {
            fake
        };
        if id[1..].starts_with('b') {
            let address = format!("unix:path={}", sock(dir, id).display());
            let (state, options) = (fake.clone(), fake.options());
            drop(rt::spawn(async move {
                helper::serve_bus(&address, state, options).await
            }));
        } else {
            drop(fake.spawn_in(dir));
        }
        fakes.push(fake);
    }
    connected(&c).await;
    (c, fakes)
}

/// Saves every helper into a stream in memory, then gives each the old
/// state; returns the stream and what each helper saved.
async fn saved(c: &Coordinator, fakes: &[Arc<Fake>]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (bytes, report) = c.save(Vec::new()).await.unwrap();
    assert_eq!(report.helpers.len(), fakes.len(), "{report:?}");
    let states = fakes.iter().map(|f| f.data()).collect();
    for f in fakes {
        f.set_data(OLD.to_vec());
    }
    (bytes, states)
}

/// The stream with its `STREAM_END` record broken in a way only reading
/// it shows: every state is intact and was delivered by then.
fn broken_at_stream_end(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut bad_crc = good.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    let mut trailing = good.to_vec();
    trailing.push(0);
    vec![
        ("a flipped bit in STREAM_END", bad_crc),
        ("a byte after STREAM_END", trailing),
    ]
}

#[test]
fn a_failure_at_stream_end_leaves_every_helper_with_its_old_state() {
    run(async {
        let dir = tmpdir();
        let ids = ["s1", "p1", "sb", "pb", "s0"];
        let (c, fakes) = helpers(dir.path(), &ids).await;
        let (good, states) = saved(&c, &fakes).await;
        for (what, bad) in broken_at_stream_end(&good) {
            let loads: Vec<usize> = fakes.iter().map(|f| f.loads()).collect();
            // Seekable: the index announces every size, so every
            // streaming helper is called and gets all but its last byte
            // (one with an empty state, which has none, is not called).
            let err = c.load_seekable(Cursor::new(bad.clone()), None).await;
            let err = err.expect_err(what);
            assert!(err.is_stream(), "{what}: {err}");
            assert_all_old(&fakes, what);
            for ((f, before), id) in fakes.iter().zip(&loads).zip(ids) {
                let called = usize::from(id.starts_with('s') && !id.ends_with('0'));
                assert_eq!(f.loads(), before + called, "{what}: Load calls of {id}");
            }
            // Read once (a pipe): loaded while read, so the same helpers
            // are called, and get every byte of their states but never the
            // seal that would let them complete.
            let loads: Vec<usize> = fakes.iter().map(|f| f.loads()).collect();
            let err = c.load(Cursor::new(bad), None).await.expect_err(what);
            assert!(err.is_stream(), "{what}: {err}");
            assert_all_old(&fakes, what);
            for ((f, before), id) in fakes.iter().zip(&loads).zip(ids) {
                let called = usize::from(id.starts_with('s') && !id.ends_with('0'));
                assert_eq!(
                    f.loads(),
                    before + called,
                    "{what}: read once, Load calls of {id}"
                );
            }
        }
        // The intact stream loads every helper, on its own path.
        let report = c.load_seekable(Cursor::new(good), None).await.unwrap();
        for (f, state) in fakes.iter().zip(&states) {
            assert!(f.data() == *state, "helper {:?} not loaded", f.id());
            let mode = report
                .helpers
                .iter()
                .find(|h| h.id == f.id())
                .map(|h| h.mode);
            let want = if f.id().starts_with('s') {
                Mode::Stream
            } else {
                Mode::Plain
            };
            assert_eq!(mode, Some(want), "{}", f.id());
        }
        c.shutdown().await;
    });
}

#[test]
fn a_failure_at_the_last_end_record_leaves_every_helper_with_its_old_state() {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = helpers(dir.path(), &["s1", "s2", "p1"]).await;
        let (good, _) = saved(&c, &fakes).await;
        // The blob CRC of the last helper's END (the stream ends with that
        // END and STREAM_END, 28 bytes each), its record CRC fixed up: the
        // index accepts it, the verifying pass fails it after every chunk.
        let mut bad = good.clone();
        let end = bad.len() - 2 * 28;
        bad[end + 20] ^= 0x01;
        let crc = crc32c::crc32c(&bad[end..end + 24]);
        bad[end + 24..end + 28].copy_from_slice(&crc.to_le_bytes());
        let err = c.load_seekable(Cursor::new(bad), None).await.unwrap_err();
        assert!(
            dbus_vmstate::error::chain(&err).contains("checksum"),
            "{}",
            dbus_vmstate::error::chain(&err)
        );
        assert_all_old(&fakes, "a bad blob checksum");
        c.shutdown().await;
    });
}

/// A native stream cut after the `BEGIN` of `id`, preceded by a complete
/// state of helper `s1`.
fn stream_beginning(id: &str) -> Vec<u8> {
    let full = native::encode(&[
        Record::new("s1", vec![5; 1000]),
        Record::new(id, vec![6; 10]),
    ])
    .unwrap();
    // Header, BEGIN s1, CHUNK, END, then the BEGIN of `id`.
    let first = native::HEADER_BYTES + (16 + 2) + (16 + 1000) + (16 + 12);
    full[..first + 16 + id.len()].to_vec()
}

#[test]
fn an_unknown_id_mid_stream_aborts_at_once() {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = helpers(dir.path(), &["s1", "p1"]).await;
        for f in &fakes {
            f.set_data(OLD.to_vec());
        }
        // A pipe whose writer stays open: the load may not wait for more.
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(&stream_beginning("stranger")).unwrap();
        let err = c.load(reader, None).await.unwrap_err();
        assert!(
            matches!(&err, Error::UnknownInStream { id } if id == "stranger"),
            "{err}"
        );
        // s1's state was complete before the stranger began: its load was
        // under way and is aborted; the plain p1 is called only once a
        // stream has verified.
        assert_eq!(fakes[1].loads(), 0, "plain p1 called");
        assert_all_old(&fakes, "an unknown Id");
        drop(writer);
        let loads: Vec<usize> = fakes.iter().map(|f| f.loads()).collect();

        // A seekable input: found by the index, before any call.
        let mut bytes = stream_beginning("stranger");
        bytes.extend_from_slice(&[0; 64]);
        let err = c.load_seekable(Cursor::new(bytes), None).await.unwrap_err();
        assert!(
            matches!(&err, Error::UnknownInStream { id } if id == "stranger"),
            "{err}"
        );
        assert_eq!(fakes.iter().map(|f| f.loads()).collect::<Vec<_>>(), loads);
        assert_still_serves(&c, &[&fakes[0], &fakes[1]]).await;
    });
}

#[test]
fn a_source_dying_mid_stream_completes_no_load() {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = helpers(dir.path(), &["s1", "p1", "sb"]).await;
        let (good, _) = saved(&c, &fakes).await;
        for cut in [good.len() / 3, good.len() - 29, good.len() - 1] {
            let (reader, mut writer) = std::io::pipe().unwrap();
            let part = good[..cut].to_vec();
            // The source writes part of the stream and dies: its end of
            // the pipe closes.
            let source = std::thread::spawn(move || {
                let _ = writer.write_all(&part);
            });
            let err = c.load(reader, None).await.unwrap_err();
            assert!(
                matches!(&err, Error::Stream(stream::Error::Truncated { .. })),
                "cut at {cut}: {err}"
            );
            source.join().unwrap();
            assert_all_old(&fakes, "a source dying");
            assert_eq!(fakes[1].loads(), 0, "plain p1 called");
        }
        c.shutdown().await;
    });
}

/// A seekable input that records how far it has been read and which
/// thread reads it.
struct Counted {
    bytes: Cursor<Vec<u8>>,
    /// The bytes read so far (the index reads a few bytes per chunk, the
    /// verifying pass all of them).
    read: Arc<AtomicU64>,
    /// `/proc/self/task/TID` of the thread that read last.
    reader: Arc<std::sync::Mutex<Option<std::path::PathBuf>>>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        let task = std::fs::read_link("/proc/thread-self")?;
        *self.reader.lock().unwrap() = Some(std::path::Path::new("/proc").join(task));
        Ok(n)
    }
}

impl Seek for Counted {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.bytes.seek(pos)
    }
}

/// Whether the thread at `task` (a `/proc` task directory) is asleep.
/// Reading an in-memory input never sleeps, so the thread reading it is
/// asleep only when it waits for room further down, or has finished.
fn asleep(task: &std::path::Path) -> bool {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    matches!(state, Some(Some('S' | 'D')))
}

/// Bytes of the `STREAM_END` record that ends every native stream.
const STREAM_END_BYTES: usize = 28;

/// A socket (read once, like a pipe) holding all of `stream` but its
/// `STREAM_END` record, written by a thread that hands back the open
/// writer; and that last record.
fn all_but_stream_end(
    stream: &[u8],
) -> (
    std::os::unix::net::UnixStream,
    std::thread::JoinHandle<std::os::unix::net::UnixStream>,
    &[u8],
) {
    let (head, tail) = stream.split_at(stream.len() - STREAM_END_BYTES);
    let (reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
    let head = head.to_vec();
    let source = std::thread::spawn(move || {
        writer.write_all(&head).unwrap();
        writer
    });
    (reader, source, tail)
}

#[test]
fn a_stream_read_once_is_loaded_while_it_arrives() {
    // Passed as a reader, and as a file that turns out to be a pipe (what
    // the control socket gets from `load --input -`).
    for as_file in [false, true] {
        stream_read_once_is_loaded_while_it_arrives(as_file);
    }
}

fn stream_read_once_is_loaded_while_it_arrives(as_file: bool) {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = helpers(dir.path(), &["s1", "p1", "sb", "s0"]).await;
        let (good, states) = saved(&c, &fakes).await;
        let (reader, source, tail) = all_but_stream_end(&good);
        let load = async {
            if as_file {
                let file = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
                c.load_seekable(file, None).await
            } else {
                c.load(reader, None).await
            }
        };
        let rest = async {
            // Both non-empty streaming helpers are loading, and have every
            // byte of their states, before the stream has ended; none has
            // completed, and the plain one is not called yet.
            until("the streaming helpers' calls", || {
                fakes[0].loads() == 1 && fakes[2].loads() == 1
            })
            .await;
            let mut writer = source.join().unwrap();
            assert_eq!((fakes[1].loads(), fakes[3].loads()), (0, 0));
            assert_all_old(&fakes, "a stream not ended yet");
            writer.write_all(tail).unwrap();
        };
        let (report, ()) = futures::join!(load, rest);
        let report = report.unwrap();
        for (f, state) in fakes.iter().zip(&states) {
            assert!(f.data() == *state, "helper {:?} not loaded", f.id());
        }
        let modes: Vec<_> = report
            .helpers
            .iter()
            .map(|h| (h.id.as_str(), h.mode))
            .collect();
        assert_eq!(
            modes,
            [
                ("s1", Mode::Stream),
                ("p1", Mode::Plain),
                ("sb", Mode::Stream),
                ("s0", Mode::Stream)
            ]
        );
        c.shutdown().await;
    });
}

#[test]
fn a_slow_source_is_no_timeout_but_a_helper_that_stops_reading_is() {
    run(async {
        let dir = tmpdir();
        let timeout = Duration::from_millis(800);
        let c = builder(dir.path(), &["s1"])
            .call_timeout(timeout)
            .bind()
            .unwrap();
        let fake = Fake::new("s1", pattern(STATE_BYTES, 1));
        drop(fake.spawn_in(dir.path()));
        connected(&c).await;
        let (good, _) = c.save(Vec::new()).await.unwrap();
        give_old([&fake]);
        // The source sends the state, then takes twice the call timeout to
        // end the stream: the helper waits for the trailer all that time.
        let (head, tail) = good.split_at(good.len() - STREAM_END_BYTES);
        let (reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (head, tail) = (head.to_vec(), tail.to_vec());
        let source = std::thread::spawn(move || {
            writer.write_all(&head).unwrap();
            std::thread::sleep(2 * timeout);
            writer.write_all(&tail).unwrap();
        });
        c.load(reader, None)
            .await
            .expect("a slow source is not a slow helper");
        source.join().unwrap();
        assert!(fake.data() == pattern(STATE_BYTES, 1));

        // A helper that reads nothing: the writes into its socket wait
        // longer than the call timeout.
        give_old([&fake]);
        fake.set_load(Step::Held);
        let err = c.load(Cursor::new(good), None).await.unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { id, .. } if id == "s1"),
            "{err}"
        );
        fake.release();
        assert_all_old([&fake], "a helper that stopped reading");
        c.shutdown().await;
    });
}

/// A streaming helper that reports when a load starts and how it ended.
struct Watched {
    state: std::sync::Mutex<Vec<u8>>,
    started: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    ended: std::sync::Mutex<std::sync::mpsc::Sender<Result<(), String>>>,
}

impl State for Watched {
    fn id(&self) -> &str {
        "s1"
    }

    fn save(&self) -> Result<Vec<u8>, helper::BoxError> {
        Ok(self.state.lock().unwrap().clone())
    }

    fn load(&self, data: Vec<u8>) -> Result<(), helper::BoxError> {
        *self.state.lock().unwrap() = data;
        Ok(())
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), helper::BoxError> {
        let _ = self.started.lock().unwrap().send(());
        let mut data = Vec::new();
        let read = input.read_to_end(&mut data).map_err(|e| e.to_string());
        let _ = self.ended.lock().unwrap().send(read.clone().map(drop));
        read?;
        self.load(data)
    }
}

#[test]
fn an_abandoned_load_commits_nothing() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["s1"]).bind().unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (ended_tx, ended) = std::sync::mpsc::channel();
        let watched = Arc::new(Watched {
            state: std::sync::Mutex::new(pattern(STATE_BYTES, 7)),
            started: std::sync::Mutex::new(started_tx),
            ended: std::sync::Mutex::new(ended_tx),
        });
        let state: Arc<dyn State> = watched.clone();
        drop(rt::spawn(helper::serve(
            sock(dir.path(), "s1"),
            state,
            helper::Options::default(),
        )));
        connected(&c).await;
        let (good, _) = c.save(Vec::new()).await.unwrap();
        *watched.state.lock().unwrap() = OLD.to_vec();
        let (reader, source, tail) = all_but_stream_end(&good);
        // The load is under way, the helper receiving its state; then the
        // load's future is dropped.
        let load = Box::pin(c.load(reader, None));
        let called = Box::pin(rt::spawn_blocking(move || started.recv().unwrap()));
        match futures::future::select(load, called).await {
            futures::future::Either::Right(((), load)) => drop(load),
            futures::future::Either::Left((result, _)) => panic!("the load ended: {result:?}"),
        }
        // The rest of the stream arrives and verifies: the abandoned load
        // must not commit the helper's state.
        let mut writer = source.join().unwrap();
        writer.write_all(tail).unwrap();
        drop(writer);
        let outcome = rt::spawn_blocking(move || ended.recv().unwrap()).await;
        assert!(outcome.is_err(), "the abandoned load completed");
        assert!(*watched.state.lock().unwrap() == OLD);
        c.shutdown().await;
    });
}

#[test]
fn a_helper_without_sealed_loads_is_loaded_from_a_spool() {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = helpers(dir.path(), &["s1", "su"]).await;
        let (good, states) = saved(&c, &fakes).await;
        // The stream is verified whole before any call: a failure at its
        // very end reaches neither helper.
        for (what, bad) in broken_at_stream_end(&good) {
            let err = c.load(Cursor::new(bad), None).await.expect_err(what);
            assert!(err.is_stream(), "{what}: {err}");
            assert_eq!((fakes[0].loads(), fakes[1].loads()), (0, 0), "{what}");
        }
        let report = c.load(Cursor::new(good), None).await.unwrap();
        assert_eq!(report.helpers.len(), 2, "{report:?}");
        for (f, state) in fakes.iter().zip(&states) {
            assert!(f.data() == *state, "helper {:?} not loaded", f.id());
        }
        c.shutdown().await;
    });
}

/// A [`Read`] that cannot seek: what `Coordinator::load` gets from a pipe.
struct ReadOnce<R>(R);

impl<R: Read> Read for ReadOnce<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

#[test]
fn a_slow_helper_holds_back_the_reading() {
    for seekable in [true, false] {
        slow_helper_holds_back_the_reading(seekable);
    }
}

fn slow_helper_holds_back_the_reading(seekable: bool) {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = helpers(dir.path(), &["s1"]).await;
        let size = 96 << 20;
        let state = pattern(size, 3);
        let bytes = native::encode(&[Record::new("s1", state.clone())]).unwrap();
        let slow = &fakes[0];
        slow.set_data(OLD.to_vec());
        // Called, the helper reads nothing until released.
        slow.set_load(Step::Held);
        let read = Arc::new(AtomicU64::new(0));
        let reader = Arc::new(std::sync::Mutex::new(None));
        let input = Counted {
            bytes: Cursor::new(bytes),
            read: read.clone(),
            reader: reader.clone(),
        };
        let load = async {
            if seekable {
                c.load_seekable(input, None).await
            } else {
                c.load(ReadOnce(input), None).await
            }
        };
        let stalled = async {
            until("the helper's LoadFd call", || slow.loads() == 1).await;
            // Asleep twice in a row with nothing read in between: waiting
            // for room, not caught in a passing wait.
            let mut seen = None;
            until("the reading thread to wait", || {
                let now = read.load(Ordering::SeqCst);
                let waiting =
                    now > (1 << 20) && reader.lock().unwrap().as_deref().is_some_and(asleep);
                let before = std::mem::replace(&mut seen, waiting.then_some(now));
                waiting && before == Some(now)
            })
            .await;
            let at = read.load(Ordering::SeqCst);
            slow.release();
            at
        };
        let (loaded, stalled_at) = futures::join!(load, stalled);
        loaded.unwrap();
        // What the coordinator buffers (a feeder's queue, the chunk pool,
        // the socket pair) is a few chunks, far from the whole state.
        assert!(
            stalled_at < (size as u64) / 4,
            "seekable {seekable}: the coordinator read {stalled_at} of {size} bytes \
             while the helper read none"
        );
        assert!(slow.data() == state);
        c.shutdown().await;
    });
}

#[test]
fn a_bad_stream_fails_even_with_no_helper_to_load() {
    run(async {
        let dir = tmpdir();
        // The one helper is optional and never connects.
        let c = builder(dir.path(), &["o"]).optional("o").bind().unwrap();
        let mut bytes = native::encode(&[Record::new("o", vec![7; 5000])]).unwrap();
        // A byte of the chunk's payload: only the verifying pass sees it.
        bytes[native::HEADER_BYTES + 17 + 12 + 100] ^= 0x01;
        let err = c.load_seekable(Cursor::new(bytes), None).await.unwrap_err();
        assert!(err.is_stream(), "{err}");
        c.shutdown().await;
    });
}

/// Compressed and encrypted (format version 2), on the live path (every
/// streaming helper has the sealed load) and on the spool (one has not):
/// a stream that fails only at its end, where the checksum or only the
/// authentication shows it, completes no load; the right key loads all.
#[test]
fn a_v2_stream_failing_at_its_end_completes_no_load() {
    for ids in [&["s1", "p1", "sb"][..], &["s1", "su"][..]] {
        run(async {
            let dir = tmpdir();
            let (c, fakes) = helpers(dir.path(), ids).await;
            let key = crate::stream_v2::test_key(3);
            let write = crate::stream_v2::options(true, Some(&key));
            let (good, report) = c.save_with(Vec::new(), &write).await.unwrap();
            assert_eq!(report.helpers.len(), ids.len(), "{report:?}");
            let states: Vec<Vec<u8>> = fakes.iter().map(|f| f.data()).collect();
            for f in &fakes {
                f.set_data(OLD.to_vec());
            }
            // STREAM_END's payload changed and its checksum recomputed:
            // only the authentication tells.
            let mut framed = crate::stream_v2::Framed::parse(&good);
            let last = framed.records.len() - 1;
            framed.records[last].1[0] ^= 1;
            let mut bad = broken_at_stream_end(&good);
            bad.push(("STREAM_END changed, CRC fixed", framed.assemble()));
            let read = native::ReadOptions {
                key: Some(key.clone()),
                allow_unencrypted: false,
            };
            for (what, bad) in bad {
                let err = c.load_with(ReadOnce(Cursor::new(bad)), None, &read).await;
                let err = err.expect_err(what);
                assert!(err.is_stream(), "{ids:?} {what}: {err}");
                for f in &fakes {
                    assert!(f.data() == OLD, "{ids:?} {what}: {} loaded", f.id());
                }
            }
            let loads: Vec<usize> = fakes.iter().map(|f| f.loads()).collect();
            let no_key = native::ReadOptions::default();
            let err = c.load_with(Cursor::new(good.clone()), None, &no_key).await;
            assert!(
                matches!(err, Err(Error::Stream(stream::Error::KeyRequired { .. }))),
                "{err:?}"
            );
            let after: Vec<usize> = fakes.iter().map(|f| f.loads()).collect();
            assert_eq!(after, loads, "{ids:?}: called without a key");
            let report = c
                .load_seekable_with(Cursor::new(good), None, &read)
                .await
                .unwrap();
            assert_eq!(report.helpers.len(), ids.len(), "{report:?}");
            for (f, state) in fakes.iter().zip(&states) {
                assert!(f.data() == *state, "{ids:?}: {} not loaded", f.id());
            }
            c.shutdown().await;
        });
    }
}
