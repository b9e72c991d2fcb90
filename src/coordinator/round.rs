//! What a save and a load both do around their calls: take the connected
//! helpers with the path each state takes, and fold the per-helper results
//! into one report or one error.

use futures::future::join_all;

use super::{transfer, HelperReport, Inner, Mode, Peer, Skipped, Transfer};
use crate::error::{self, Call, Error};

/// A connected helper taking part in a save or load.
#[derive(Debug)]
pub(crate) struct Participant {
    /// Its slot index.
    pub slot: usize,
    /// Its connection, held for the whole save or load.
    pub peer: Peer,
    /// The path its state takes.
    pub mode: Mode,
}

/// The connected helpers among `slots` with their modes (detected at once
/// for all of them), and the others skipped as not connected.
pub(crate) async fn participants(
    inner: &Inner,
    slots: impl IntoIterator<Item = usize>,
) -> (Vec<Participant>, Vec<Skipped>) {
    let mut connected = Vec::new();
    let mut skipped = Vec::new();
    for slot in slots {
        match inner.slots[slot].peer() {
            Some(peer) => connected.push((slot, peer)),
            None => skipped.push(skipped_as(inner, slot, "not connected")),
        }
    }
    let modes = join_all(
        connected
            .iter()
            .map(|(slot, peer)| transfer::mode(inner, *slot, peer)),
    )
    .await;
    let participants = connected
        .into_iter()
        .zip(modes)
        .map(|((slot, peer), mode)| Participant { slot, peer, mode })
        .collect();
    (participants, skipped)
}

/// The helper in `slot`, left out for `reason`.
pub(crate) fn skipped_as(inner: &Inner, slot: usize, reason: impl Into<String>) -> Skipped {
    Skipped {
        id: inner.slots[slot].spec.id.clone(),
        reason: reason.into(),
    }
}

/// Warns that an optional helper is left out.
fn warn_skipped(skipped: &Skipped) {
    tracing::warn!(helper = %skipped.id, "optional helper skipped: {}", skipped.reason);
}

/// The per-helper results of a save or load, collected as they come.
#[derive(Debug)]
pub(crate) struct Outcomes {
    call: Call,
    helpers: Vec<HelperReport>,
    skipped: Vec<Skipped>,
    /// Failures of required helpers, by slot.
    errors: Vec<(usize, Error)>,
}

impl Outcomes {
    /// Outcomes of `call` (`Save` or `Load`), starting with the optional
    /// helpers already `skipped` (each gets its warning now).
    pub fn new(call: Call, skipped: Vec<Skipped>) -> Self {
        skipped.iter().for_each(warn_skipped);
        Outcomes {
            call,
            helpers: Vec::new(),
            skipped,
            errors: Vec::new(),
        }
    }

    /// Whether every helper so far succeeded or was optional.
    pub fn all_passed(&self) -> bool {
        self.errors.is_empty()
    }

    /// Takes in the result of the helper in `slot`: a success is reported
    /// and kept as the slot's last transfer; a required helper's failure
    /// fails the whole; an optional helper's failure skips it.
    pub fn record(
        &mut self,
        inner: &Inner,
        slot: usize,
        mode: Mode,
        result: Result<Transfer, Error>,
    ) {
        let s = &inner.slots[slot];
        match result {
            Ok(transfer) => {
                tracing::debug!(helper = %s.spec.id, bytes = transfer.bytes, %mode, call = %self.call, "done");
                let mut state = s.state();
                match self.call {
                    Call::Save => state.last_save = Some(transfer.clone()),
                    Call::Load => state.last_load = Some(transfer.clone()),
                    // Not a transfer.
                    Call::Id => {}
                }
                self.helpers.push(HelperReport {
                    id: s.spec.id.clone(),
                    transfer,
                    mode,
                });
            }
            Err(e) if s.spec.required => self.errors.push((slot, e)),
            Err(e) => {
                let skipped = skipped_as(inner, slot, error::chain(&e));
                warn_skipped(&skipped);
                self.skipped.push(skipped);
            }
        }
    }

    /// The reports and the skipped helpers, or every error folded into
    /// one: `first` (about the whole save or load) ahead of the helpers'
    /// failures in configuration order.
    ///
    /// # Errors
    ///
    /// `first`, and every required helper's failure.
    pub fn finish(
        mut self,
        first: Option<Error>,
    ) -> Result<(Vec<HelperReport>, Vec<Skipped>), Error> {
        self.errors.sort_by_key(|(slot, _)| *slot);
        let errors = first
            .into_iter()
            .chain(self.errors.into_iter().map(|(_, e)| e))
            .collect();
        match Error::from_many(errors) {
            Some(e) => Err(e),
            None => Ok((self.helpers, self.skipped)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::coordinator::{Config, HelperSpec};

    fn inner(required: &[bool]) -> Inner {
        let helpers = required
            .iter()
            .enumerate()
            .map(|(i, &required)| HelperSpec {
                id: format!("h{i}"),
                socket: format!("/tmp/h{i}.sock").into(),
                required,
            })
            .collect();
        Inner::new(Config {
            helpers,
            allow_uids: vec![0],
            connect_timeout: Duration::ZERO,
            call_timeout: Duration::ZERO,
            handshake_timeout: Duration::ZERO,
            max_blob_bytes: 0,
            socket_owner: None,
            qemu_socket: None,
            budget: crate::coordinator::budget::Budget::new(0),
        })
    }

    fn done(bytes: u64) -> Result<Transfer, Error> {
        Ok(Transfer {
            bytes,
            duration: Duration::ZERO,
        })
    }

    fn failed(id: &str) -> Result<Transfer, Error> {
        Err(Error::UnknownInStream { id: id.into() })
    }

    #[test]
    fn successes_are_reported_and_kept_as_last_transfer() {
        let inner = inner(&[true, false]);
        let mut outcomes = Outcomes::new(Call::Load, Vec::new());
        outcomes.record(&inner, 1, Mode::Stream, done(7));
        outcomes.record(&inner, 0, Mode::Plain, done(3));
        let (helpers, skipped) = outcomes.finish(None).unwrap();
        let ids: Vec<_> = helpers.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["h1", "h0"], "in the order they came");
        assert!(skipped.is_empty());
        assert_eq!(inner.slots[1].state().last_load.as_ref().unwrap().bytes, 7);
        assert!(inner.slots[1].state().last_save.is_none());
    }

    #[test]
    fn an_optional_failure_is_skipped() {
        let inner = inner(&[true, false]);
        let mut outcomes = Outcomes::new(Call::Save, Vec::new());
        outcomes.record(&inner, 0, Mode::Plain, done(1));
        outcomes.record(&inner, 1, Mode::Plain, failed("x"));
        assert!(outcomes.all_passed());
        let (helpers, skipped) = outcomes.finish(None).unwrap();
        assert_eq!(helpers.len(), 1);
        assert_eq!(skipped[0].id, "h1");
        assert!(skipped[0].reason.contains("\"x\""), "{}", skipped[0].reason);
    }

    #[test]
    fn required_failures_fold_in_configuration_order_after_the_first() {
        let inner = inner(&[true, true, true]);
        let mut outcomes = Outcomes::new(Call::Save, Vec::new());
        outcomes.record(&inner, 2, Mode::Plain, failed("c"));
        outcomes.record(&inner, 1, Mode::Plain, done(1));
        outcomes.record(&inner, 0, Mode::Plain, failed("a"));
        assert!(!outcomes.all_passed());
        let first = Error::MissingInStream { id: "z".into() };
        let Err(Error::Several { errors }) = outcomes.finish(Some(first)) else {
            panic!("expected several errors");
        };
        let ids: Vec<_> = errors.iter().map(|e| e.helper_id().unwrap()).collect();
        assert_eq!(ids, ["z", "a", "c"]);
    }

    #[test]
    fn one_failure_is_the_error_itself() {
        let inner = inner(&[true]);
        let mut outcomes = Outcomes::new(Call::Load, Vec::new());
        outcomes.record(&inner, 0, Mode::Stream, failed("a"));
        let err = outcomes.finish(None).unwrap_err();
        assert!(matches!(err, Error::UnknownInStream { .. }), "{err}");
    }
}
