//! `reconcile completions SHELL` and `reconcile man`: shell completion scripts and a
//! roff man page, both generated from the clap definitions in `cli`, so they can never
//! disagree with the flags the binary accepts.

use std::io::Write as _;

use clap::CommandFactory as _;

use super::{Cli, ExitCode};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to generate the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {}

/// Print the completion script for `args.shell` on stdout.
///
/// # Errors
/// Writing to stdout fails.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "reconcile", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::Ok)
}

/// Print the man page reconcile(1) (roff) on stdout: every command with its flags.
///
/// # Errors
/// Rendering or writing to stdout fails.
pub fn man(_args: &ManArgs) -> anyhow::Result<ExitCode> {
    let out = render_man()?;
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::Ok)
}

/// reconcile(1): the top-level page, then one section per subcommand (its synopsis,
/// description and options as subsections). clap_mangen renders one command per page;
/// a single page is what `man -l` and packagers want.
fn render_man() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("reconcile {}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().bin_name(name.clone()));
        let mut page = Vec::new();
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        for line in String::from_utf8_lossy(&page).lines() {
            // the sections of a subcommand become subsections of its own section
            match line.strip_prefix(".SH ") {
                Some(title) => writeln!(out, ".SS {title}")?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    Ok(out)
}
