//! The memory budget of plain states (`Builder::memory_limit`): saves and
//! loads of plain helpers hold at most that much state at once, waiting
//! for room; beyond it a load spills to a temporary file; a state that can
//! never fit is an error naming its helper.

use std::io::Cursor;
use std::sync::Arc;

use crate::util::*;
use dbus_vmstate::coordinator::Coordinator;
use dbus_vmstate::helper::State;
use dbus_vmstate::stream::{native, Record};
use dbus_vmstate::Error;

const MIB: usize = 1 << 20;

/// Room for two plain `Save`s of 1 MiB (a reply each), not three.
const TWO_SAVES: usize = 5 * MIB / 2;

/// Room for two plain `Load`s of 1 MiB (the state and zbus's two copies
/// of the message each), not three.
const TWO_LOADS: usize = 13 * MIB / 2;

/// Four plain helpers of 1 MiB, with a budget of `limit` bytes.
async fn four_plain(dir: &std::path::Path, limit: usize) -> (Coordinator, Vec<Arc<Fake>>) {
    let ids = ["p0", "p1", "p2", "p3"];
    let c = builder(dir, &ids)
        .memory_limit(limit as u64)
        .bind()
        .unwrap();
    let fakes: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Fake::new(id, pattern(MIB, i as u8)).plain())
        .collect();
    for f in &fakes {
        drop(f.spawn_in(dir));
    }
    connected(&c).await;
    (c, fakes)
}

/// Calls seen by `fake`: `Save`s or `Load`s.
type Count = fn(&Fake) -> usize;

/// Lets the held helpers go one at a time, checking each time that no
/// more calls are under way than the budget has room for (two). `before`
/// is what [`Count`] said of each before the save or load.
async fn release_one_by_one(fakes: &[Arc<Fake>], before: &[usize], of: Count) {
    let started = || -> usize { fakes.iter().zip(before).map(|(f, b)| of(f) - b).sum() };
    let mut released = vec![false; fakes.len()];
    for n in 0..fakes.len() {
        let room = (n + 2).min(fakes.len());
        until("the calls the budget has room for", || started() >= room).await;
        assert_eq!(
            started(),
            room,
            "{n} released: more calls under way than the budget holds"
        );
        // One of the helpers called (and held) goes on.
        let next = (0..fakes.len())
            .find(|&i| !released[i] && of(&fakes[i]) > before[i])
            .expect("a held helper");
        released[next] = true;
        fakes[next].release();
    }
}

fn counts(fakes: &[Arc<Fake>], of: Count) -> Vec<usize> {
    fakes.iter().map(|f| of(f)).collect()
}

#[test]
fn plain_saves_wait_for_room_in_the_budget() {
    run(async {
        let dir = tmpdir();
        let (c, fakes) = four_plain(dir.path(), TWO_SAVES).await;
        // The first save learns each state's size.
        let (first, _) = c.save(Vec::new()).await.unwrap();
        for f in &fakes {
            f.set_save(Step::Held);
        }
        let before = counts(&fakes, Fake::saves);
        let save = c.save(Vec::new());
        let (saved, ()) = futures::join!(save, release_one_by_one(&fakes, &before, Fake::saves));
        let (second, report) = saved.unwrap();
        assert_eq!(report.helpers.len(), 4);
        // The same states, in the order the replies came.
        let sorted = |bytes: &[u8]| {
            let mut records = native::read_all(bytes, Default::default()).unwrap();
            records.sort_by(|a, b| a.id.cmp(&b.id));
            records
        };
        assert!(sorted(&second) == sorted(&first), "the states saved differ");
        c.shutdown().await;
    });
}

#[test]
fn plain_loads_beyond_the_budget_are_spilled_and_wait_for_room() {
    for seekable in [true, false] {
        run(async {
            let dir = tmpdir();
            let (c, fakes) = four_plain(dir.path(), TWO_LOADS).await;
            let (stream, _) = c.save(Vec::new()).await.unwrap();
            let states: Vec<_> = fakes.iter().map(|f| f.data()).collect();
            for f in &fakes {
                f.set_data(b"old".to_vec());
                f.set_load(Step::Held);
            }
            // Two states fit in the budget, the other two are spilled.
            let input = Cursor::new(stream);
            let load = async {
                match seekable {
                    true => c.load_seekable(input, None).await,
                    false => c.load(input, None).await,
                }
            };
            let before = counts(&fakes, Fake::loads);
            let (loaded, ()) =
                futures::join!(load, release_one_by_one(&fakes, &before, Fake::loads));
            assert_eq!(loaded.unwrap().helpers.len(), 4, "seekable: {seekable}");
            for (f, state) in fakes.iter().zip(&states) {
                assert!(f.data() == *state, "{} not loaded", State::id(&**f));
            }
            c.shutdown().await;
        });
    }
}

#[test]
fn a_plain_state_that_can_never_fit_is_named() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["small", "big"])
            .memory_limit(1000)
            .bind()
            .unwrap();
        let small = Fake::new("small", vec![1; 10]).plain();
        let big = Fake::new("big", vec![2; 1001]).plain();
        drop(small.spawn_in(dir.path()));
        drop(big.spawn_in(dir.path()));
        connected(&c).await;
        let err = c.save(Vec::new()).await.unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge { id, size: 1001, limit: 1000, .. } if id == "big"),
            "{err}"
        );
        assert!(err.to_string().contains("memory limit"), "{err}");

        let stream = native::encode(&[
            Record::new("small", vec![3; 10]),
            Record::new("big", vec![4; 1001]),
        ])
        .unwrap();
        let loads = small.loads() + big.loads();
        let err = c
            .load_seekable(Cursor::new(stream), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge { id, size: 1001, .. } if id == "big"),
            "{err}"
        );
        assert_eq!(
            small.loads() + big.loads(),
            loads,
            "no Load before the error"
        );
        c.shutdown().await;
    });
}
