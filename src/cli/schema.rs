//! `reconcile schema [KIND] [--editor] [--out DIR]`: print or write the embedded JSON
//! Schemas — the spec files (full, and the per-file editor variants derived from them)
//! and every JSON output (plan, validate, status, history, the apply report, watch's /status.json).

use std::path::Path;

use anyhow::{Context as _, bail};
use clap::ValueEnum;

use super::ExitCode;
use crate::spec::schema::{self, Kind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which schema; all of them (as one JSON object keyed by name) when omitted.
    pub kind: Option<Which>,
    /// With `environment` or `app`: the editor schema for one file of an `extends`
    /// chain (what validate checks per file; null deletes an inherited key).
    #[arg(long)]
    pub editor: bool,
    /// Write every schema as a file under DIR (`DIR/editor/` for the editor schemas)
    /// instead of printing, e.g. `--out schema` in a config repo for the editor.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kind", "editor"])]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Environment,
    App,
    Plan,
    Validate,
    Status,
    History,
    Report,
    StatusPage,
}

impl Which {
    const ALL: [Which; 8] = [
        Which::Environment,
        Which::App,
        Which::Plan,
        Which::Validate,
        Which::Status,
        Which::History,
        Which::Report,
        Which::StatusPage,
    ];

    fn name(self) -> &'static str {
        match self {
            Which::Environment => "environment",
            Which::App => "app",
            Which::Plan => "plan",
            Which::Validate => "validate",
            Which::Status => "status",
            Which::History => "history",
            Which::Report => "report",
            Which::StatusPage => "status-page",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Which::Environment => schema::ENVIRONMENT,
            Which::App => schema::APP,
            Which::Plan => schema::PLAN,
            Which::Validate => schema::VALIDATE,
            Which::Status => schema::STATUS,
            Which::History => schema::HISTORY,
            Which::Report => schema::REPORT,
            Which::StatusPage => schema::STATUS_PAGE,
        }
    }

    fn spec_kind(self) -> Option<Kind> {
        match self {
            Which::Environment => Some(Kind::Environment),
            Which::App => Some(Kind::App),
            _ => None,
        }
    }
}

/// # Errors
/// `--editor` with a kind that has no editor schema, or DIR cannot be written.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.out {
        write_all(dir)?;
        return Ok(ExitCode::Ok);
    }
    let text = match (args.kind, args.editor) {
        (Some(w), true) => match w.spec_kind() {
            Some(k) => schema::editor_text(k),
            None => bail!(
                "`--editor` is for the spec files only: use `reconcile schema environment --editor` or `app --editor`"
            ),
        },
        (Some(w), false) => w.source().to_string(),
        (None, editor) => {
            let mut all = serde_json::Map::new();
            for w in Which::ALL.into_iter().filter(|w| !editor || w.spec_kind().is_some()) {
                let v = match (editor, w.spec_kind()) {
                    (true, Some(k)) => schema::editor(k),
                    _ => serde_json::from_str(w.source())?,
                };
                all.insert(w.name().into(), v);
            }
            serde_json::to_string_pretty(&all)? + "\n"
        }
    };
    super::out::print(&text)?;
    Ok(ExitCode::Ok)
}

/// Every schema file, as committed under `schema/` in this repo.
fn write_all(dir: &Path) -> anyhow::Result<()> {
    let editor_dir = dir.join("editor");
    std::fs::create_dir_all(&editor_dir).with_context(|| format!("cannot create {}", editor_dir.display()))?;
    let mut written = Vec::new();
    for w in Which::ALL {
        let path = dir.join(format!("{}.schema.json", w.name()));
        write(&path, w.source())?;
        written.push(path);
        if let Some(k) = w.spec_kind() {
            let path = editor_dir.join(k.file_name());
            write(&path, &schema::editor_text(k))?;
            written.push(path);
        }
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
