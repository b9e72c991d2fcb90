//! The control client: calls a running coordinator's control interface.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use zbus::{Connection, Fd};

use super::error::Error;
use super::wire::{OptionsDict, QemuStatusDict, ReportDict, StatusDict};
use super::{LoadOptions, Report, SaveOptions, INTERFACE, OBJECT_PATH};
use crate::coordinator::{HelperStatus, QemuStatus};

/// A connection to a coordinator's control socket.
///
/// Calls carry no timeout of their own: the coordinator bounds each helper
/// call and the wait for helpers to connect, and reports when they pass.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    path: PathBuf,
}

impl Client {
    /// Connects to the control socket at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when nothing listens there, [`Error::Handshake`]
    /// when the D-Bus handshake fails (the coordinator refuses callers of
    /// another uid by closing the connection).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
            .map_err(|source| Error::Handshake {
                path: path.clone(),
                source: Box::new(source),
            })?;
        Ok(Client { conn, path })
    }

    /// The control socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves every helper; the coordinator writes the state stream into
    /// `out` (a file, a pipe, a socket, opened for writing).
    ///
    /// On error, `out` may hold part of a stream (never a complete one), so
    /// pass a temporary file and rename it only on success.
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] with the coordinator's named error; see
    /// [`Error::is_migration_failure`].
    pub async fn save(&self, out: &impl AsFd, options: &SaveOptions) -> Result<Report, Error> {
        let mut dict = OptionsDict::save(options);
        if let Some(key) = &options.key {
            dict.key_fd =
                Some(super::wire::key_pipe(key).map_err(|source| Error::PassKey { source })?);
        }
        let body = (Fd::from(out), dict);
        let reply: ReportDict = self.call("Save", &body).await?;
        report("Save", reply)
    }

    /// Loads the state stream the coordinator reads from `input` (opened
    /// for reading) to its end.
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] with the coordinator's named error.
    pub async fn load(&self, input: &impl AsFd, options: &LoadOptions) -> Result<Report, Error> {
        let mut dict = OptionsDict::load(options);
        if let Some(key) = &options.key {
            dict.key_fd =
                Some(super::wire::key_pipe(key).map_err(|source| Error::PassKey { source })?);
        }
        let body = (Fd::from(input), dict);
        let reply: ReportDict = self.call("Load", &body).await?;
        report("Load", reply)
    }

    /// Each helper's connection and last transfers.
    ///
    /// # Errors
    ///
    /// When the call fails.
    pub async fn status(&self) -> Result<Vec<HelperStatus>, Error> {
        let reply: Vec<StatusDict> = self.call("Status", &()).await?;
        Ok(reply.into_iter().map(HelperStatus::from).collect())
    }

    /// QEMU's front door, `None` when the coordinator has none (or is of
    /// a version without one).
    ///
    /// # Errors
    ///
    /// When the call fails.
    pub async fn qemu_status(&self) -> Result<Option<QemuStatus>, Error> {
        match self.call::<_, QemuStatusDict>("QemuStatus", &()).await {
            Ok(reply) => Ok(reply.into()),
            Err(Error::Failed { name, .. })
                if name == "org.freedesktop.DBus.Error.UnknownMethod" =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }

    async fn call<B, R>(&self, method: &'static str, body: &B) -> Result<R, Error>
    where
        B: serde::Serialize + zbus::DynamicType,
        R: DeserializeOwned + zbus::Type,
    {
        let reply = self
            .conn
            .call_method(None::<&str>, OBJECT_PATH, Some(INTERFACE), method, body)
            .await
            .map_err(|e| Error::from_call(method, e))?;
        reply
            .body()
            .deserialize::<R>()
            .map_err(|source| Error::Call {
                method,
                source: Box::new(source),
            })
    }
}

fn report(method: &'static str, reply: ReportDict) -> Result<Report, Error> {
    Report::try_from(reply).map_err(|reason| Error::Call {
        method,
        source: Box::new(zbus::Error::Failure(reason)),
    })
}
