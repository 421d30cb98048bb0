//! Secret values: held only in memory, never printed.
//!
//! `Secret` has no `Display`, and its `Debug` and `Serialize` write `(sensitive)`,
//! so a secret cannot reach a plan, a log line, JSON output or etcd by accident.

use serde::{Serialize, Serializer};

/// What a secret looks like wherever it would be shown.
pub const MASK: &str = "(sensitive)";

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The value, for the few places that must use it (container env, rendered files, hashing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

// -- etcdsec: age file format checks (pure; decryption lives in backend::secrets) --

/// Check that `bytes` start with a valid age header (armored or binary), without
/// decrypting.
///
/// # Errors
/// What is wrong with the header.
pub fn check_age_header(bytes: &[u8]) -> Result<(), String> {
    match age::Decryptor::new(age::armor::ArmoredReader::new(bytes)) {
        Ok(d) if d.is_scrypt() => {
            Err("it is passphrase-encrypted; reconcile decrypts files for X25519 recipients only".into())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(describe_age(e)),
    }
}

/// A one-line cause for an age error (never containing key material).
pub fn describe_age(e: age::DecryptError) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => "it is not encrypted to any of the age identities given".into(),
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "it is not an age file (no valid age-encryption.org/v1 header)".into()
        }
        age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => "the file is damaged".into(),
        age::DecryptError::Io(e) => format!("it is not an age file, or it is truncated ({})", e.kind()),
        other => other.to_string(),
    }
}

/// An X25519 recipient (`age1…`).
///
/// # Errors
/// Not a valid recipient (wrong prefix, length or checksum).
pub fn parse_recipient(r: &str) -> Result<age::x25519::Recipient, String> {
    use std::str::FromStr as _;
    age::x25519::Recipient::from_str(r).map_err(|_| format!("`{r}` is not a valid age X25519 recipient (age1…)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shown() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"(sensitive)\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
