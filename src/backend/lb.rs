//! The load balancer's config file, on the machine running reconcile.
//!
//! Observation reads the file (a missing file is a state, not an error). Writing,
//! checking and reloading come with `apply`.

use std::io::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot read LB config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("LB config {path} is not valid UTF-8")]
    NotUtf8 { path: String },
}

/// The current content of the LB file, `None` when it does not exist.
///
/// # Errors
/// The file exists but cannot be read or is not UTF-8.
pub fn read(path: &str) -> Result<Option<String>, LbError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| LbError::NotUtf8 { path: path.into() }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LbError::Read { path: path.into(), source: e }),
    }
}
