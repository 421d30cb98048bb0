//! `reconcile completions bash|zsh|fish` and `reconcile man`: generated from the clap
//! definitions, accepted by the real shells / `man`, and naming every command.

use std::process::Command;

use super::{reconcile, stderr, stdout};

const COMMANDS: &[&str] = &[
    "validate",
    "plan",
    "apply",
    "diff",
    "status",
    "watch",
    "history",
    "rollback",
    "schema",
    "import",
    "completions",
    "man",
];

#[test]
fn bash_completion_is_valid_bash_and_completes_commands_and_flags() {
    let o = reconcile(&["completions", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let script = stdout(&o);
    for c in COMMANDS {
        assert!(script.contains(c), "no {c} in the bash completion");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reconcile.bash");
    std::fs::write(&path, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", stderr(&syntax));
    // load it and ask for completions as bash would: `reconcile va<TAB>`, `reconcile validate --fo<TAB>`
    let probe = format!(
        "source {}\nCOMP_WORDS=(reconcile va); COMP_CWORD=1; _reconcile reconcile va reconcile; echo \"${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(reconcile validate --fo); COMP_CWORD=2; _reconcile reconcile --fo validate; echo \"${{COMPREPLY[*]}}\"\n",
        path.display()
    );
    let run = Command::new("bash").arg("-c").arg(probe).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let lines: Vec<String> = stdout(&run).lines().map(str::to_string).collect();
    assert_eq!(lines[0], "validate");
    assert_eq!(lines[1], "--format");
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for (shell, marker) in [("zsh", "#compdef reconcile"), ("fish", "complete -c reconcile")] {
        let o = reconcile(&["completions", shell]);
        assert!(o.status.success(), "{}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        for c in COMMANDS {
            assert!(script.contains(c), "no {c} in the {shell} completion");
        }
    }
    let bad = reconcile(&["completions", "powershell"]);
    assert_eq!(bad.status.code(), Some(2), "clap rejects an unknown shell");
}

#[test]
fn man_page_renders_and_documents_every_command() {
    let o = reconcile(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let roff = stdout(&o);
    assert!(roff.starts_with(".ie") || roff.contains(".TH reconcile 1"), "{}", &roff[..200.min(roff.len())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reconcile.1");
    std::fs::write(&path, &roff).unwrap();
    let man = Command::new("man").arg("-l").arg(&path).env("MANWIDTH", "100").env("MAN_KEEP_FORMATTING", "0").output();
    let text = match man {
        Ok(o) if o.status.success() => plain(&stdout(&o)),
        Ok(o) => panic!("man -l failed: {}", stderr(&o)),
        Err(e) => panic!("man is missing ({e}): install man-db"),
    };
    for c in COMMANDS {
        assert!(text.contains(&format!("RECONCILE {}", c.to_uppercase())), "no section for {c}:\n{text}");
    }
    // flags of a subcommand are rendered in its section
    assert!(text.contains("--detailed-exitcode"), "{text}");
    assert!(text.contains("--check-secrets"), "{text}");
}

/// man's output without overstrike (`X\x08X` bold, `_\x08X` underline).
fn plain(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}
