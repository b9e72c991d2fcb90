//! placeholder
pub mod coordinator;
pub mod error;
pub mod helper;
pub mod iface;
pub mod rt;
pub mod stream;
pub use error::{Error, Result};
