//! One D-Bus call on one helper, and the errors it maps to: the one place
//! that turns a zbus error into [`Error::Call`], a passed deadline into
//! [`Error::Timeout`] and a failed socket transfer into
//! [`Error::Transfer`], each naming the helper and the call.

use std::future::Future;
use std::time::Duration;

use super::Inner;
use crate::error::{Call, Error};
use crate::rt;

/// A call on one helper under the coordinator's call timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HelperCall<'a> {
    /// The helper's Id.
    pub id: &'a str,
    /// Which call.
    pub call: Call,
    /// Its deadline.
    pub timeout: Duration,
}

impl<'a> HelperCall<'a> {
    /// `call` on the helper in slot `index`, with the call timeout.
    pub fn new(inner: &'a Inner, index: usize, call: Call) -> Self {
        HelperCall {
            id: &inner.slots[index].spec.id,
            call,
            timeout: inner.config.call_timeout,
        }
    }

    /// The call failed with `source` (an error reply, a lost connection, a
    /// malformed reply).
    pub fn failed(&self, source: zbus::Error) -> Error {
        failed(self.id, self.call, source)
    }

    /// The deadline passed.
    pub fn timed_out(&self) -> Error {
        Error::Timeout {
            id: self.id.to_string(),
            call: self.call,
            timeout: self.timeout,
        }
    }

    /// Moving the state through the helper's socket failed.
    pub fn transfer(&self, reason: impl Into<String>, source: Option<std::io::Error>) -> Error {
        Error::Transfer {
            id: self.id.to_string(),
            call: self.call,
            reason: reason.into(),
            source,
        }
    }

    /// Awaits `work` (the call and whatever goes with it) until the
    /// deadline; [`HelperCall::timed_out`] when it passes first.
    pub async fn within<F: Future>(&self, work: F) -> Result<F::Output, Error> {
        rt::timeout(self.timeout, work)
            .await
            .map_err(|rt::Elapsed| self.timed_out())
    }

    /// Awaits the D-Bus call `call` until the deadline, mapping its error.
    pub async fn run<T>(&self, call: impl Future<Output = zbus::Result<T>>) -> Result<T, Error> {
        self.within(call).await?.map_err(|e| self.failed(e))
    }
}

/// [`Error::Call`]: `call` on helper `id` failed with `source`.
pub(crate) fn failed(id: &str, call: Call, source: zbus::Error) -> Error {
    Error::Call {
        id: id.to_string(),
        call,
        source: Box::new(source),
    }
}
