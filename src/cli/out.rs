//! Standard output for reports: a reader that goes away (`reconcile validate | head`)
//! ends a report command quietly, as it ends `cat` or `grep`, instead of a panic
//! (`println!` panics on a closed pipe) or an `error: Broken pipe (os error 32)`.
//!
//! **Invariant.** Report commands write stdout only through `writeln!`/`write!` on a
//! locked stdout (or [`print`]) and pass the `io::Error` up with `?`; [`quiet_if_closed`]
//! turns a broken pipe anywhere in the error chain into a quiet exit 0. Commands that
//! change things (apply, rollback, watch, exec) are not wrapped: their exit code keeps
//! saying what happened to the fleet.

use std::io::Write as _;

use super::ExitCode;

/// Write `text` to stdout, flushed.
///
/// # Errors
/// stdout cannot be written (a closed pipe is [`std::io::ErrorKind::BrokenPipe`]).
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// True when `e` is, or was caused by, a write to a pipe whose reader is gone.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// A report command's result, with a closed stdout counted as a quiet success: the
/// reader has all it asked for.
///
/// # Errors
/// `result`'s error, unless it is a closed pipe.
pub fn quiet_if_closed(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(e) if is_closed_pipe(&e) => Ok(ExitCode::Ok),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "Broken pipe (os error 32)")
    }

    #[test]
    fn a_closed_pipe_anywhere_in_the_chain_is_a_quiet_success() {
        let direct = anyhow::Error::from(pipe_error());
        assert!(is_closed_pipe(&direct));
        let wrapped = anyhow::Error::from(pipe_error()).context("printing the plan");
        assert!(is_closed_pipe(&wrapped));
        assert!(matches!(quiet_if_closed(Err(wrapped)), Ok(ExitCode::Ok)));
    }

    #[test]
    fn other_errors_and_exit_codes_pass_through() {
        let other = anyhow::Error::from(std::io::Error::other("disk full"));
        assert!(!is_closed_pipe(&other));
        let e = quiet_if_closed(Err(other)).unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert!(matches!(quiet_if_closed(Ok(ExitCode::Changes)), Ok(ExitCode::Changes)));
        assert!(matches!(quiet_if_closed(Ok(ExitCode::Error)), Ok(ExitCode::Error)));
    }
}
