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
