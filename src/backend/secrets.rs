//! Resolving secrets from the reconcile process's environment or files.
//!
//! Resolution happens only when a value is needed (plan/apply, or
//! `validate --check-secrets`). Errors name the secret and its source, never a value.

use std::collections::BTreeMap;

use crate::secret::Secret;
use crate::spec::model::SecretSource;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}`: environment variable {var} is not set")]
    MissingEnv { name: String, var: String },
    #[error("secret `{name}`: environment variable {var} is empty")]
    EmptyEnv { name: String, var: String },
    #[error("secret `{name}`: cannot read {path}: {reason}")]
    File { name: String, path: String, reason: String },
}

impl SecretError {
    pub fn hint(&self) -> String {
        match self {
            SecretError::MissingEnv { var, .. } | SecretError::EmptyEnv { var, .. } => {
                format!("export {var}=... in the environment that runs reconcile (in CI: a masked secret variable)")
            }
            SecretError::File { path, .. } => {
                format!("create {path} readable by the user running reconcile, or change from_file")
            }
        }
    }
}

/// Resolve one secret.
///
/// # Errors
/// The variable is unset or empty, or the file cannot be read or is not UTF-8.
pub fn resolve(name: &str, src: &SecretSource) -> Result<Secret, SecretError> {
    match src {
        SecretSource::FromEnv(var) => match std::env::var(var) {
            Ok(v) if v.is_empty() => Err(SecretError::EmptyEnv { name: name.into(), var: var.clone() }),
            Ok(v) => Ok(Secret::new(v)),
            Err(_) => Err(SecretError::MissingEnv { name: name.into(), var: var.clone() }),
        },
        SecretSource::FromFile(path) => {
            let bytes = std::fs::read(path).map_err(|e| SecretError::File {
                name: name.into(),
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let text = String::from_utf8(bytes).map_err(|_| SecretError::File {
                name: name.into(),
                path: path.clone(),
                reason: "not valid UTF-8".into(),
            })?;
            Ok(Secret::new(text.strip_suffix('\n').unwrap_or(&text).to_string()))
        }
    }
}

/// Resolve all secrets of an environment; every failure is returned, not just the first.
pub fn resolve_all(secrets: &BTreeMap<String, SecretSource>) -> (BTreeMap<String, Secret>, Vec<SecretError>) {
    let mut ok = BTreeMap::new();
    let mut errs = Vec::new();
    for (name, src) in secrets {
        match resolve(name, src) {
            Ok(s) => {
                ok.insert(name.clone(), s);
            }
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let s = resolve("db", &SecretSource::FromFile(p.to_string_lossy().into())).unwrap();
        assert_eq!(s.expose(), "s3cret");
        let e = resolve("db", &SecretSource::FromEnv("RECONCILE_TEST_SURELY_UNSET_VAR".into())).unwrap_err();
        assert_eq!(e.to_string(), "secret `db`: environment variable RECONCILE_TEST_SURELY_UNSET_VAR is not set");
        let e = resolve("db", &SecretSource::FromFile("/nonexistent/x".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x") && !e.to_string().contains("s3cret"));
    }
}
