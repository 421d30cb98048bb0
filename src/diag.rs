//! Diagnostics: what is wrong, where (`file:line:col`), and how to fix it.
//!
//! Validation collects every problem it finds into a `Vec<Diagnostic>` instead of
//! stopping at the first one (rust-analyzer: parsing never fails, it produces
//! `(T, Vec<Error>)`). Rendering is separate: a compiler-style text report with a
//! source snippet (miette) or JSON for CI annotations and editors.
//!
//! Invariant: pure. Sources are handed in; nothing is read here.

use std::collections::BTreeMap;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
use serde::Serialize;

use crate::spec::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a config repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable, greppable identifier, e.g. `schema`, `yaml`, `placement`.
    pub code: &'static str,
    pub message: String,
    /// Path of the file as shown to the user (relative to the working directory when local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    #[serde(skip)]
    pub pos: Option<Pos>,
    /// Short text shown under the span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: None,
            line: None,
            column: None,
            pos: None,
            label: None,
            hint: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(code, message) }
    }

    /// Attach a location.
    pub fn at(mut self, file: impl Into<String>, pos: Option<Pos>) -> Self {
        self.file = Some(file.into());
        self.line = pos.map(|p| p.line);
        self.column = pos.map(|p| p.col);
        self.pos = pos;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` (or as much of it as is known).
    pub fn location(&self) -> String {
        match (&self.file, self.line, self.column) {
            (Some(f), Some(l), Some(c)) => format!("{f}:{l}:{c}"),
            (Some(f), _, _) => f.clone(),
            _ => String::new(),
        }
    }
}

/// Sort for output: by file, line, column, then message; drop exact duplicates.
pub fn normalize(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message)));
    diags.dedup();
}

/// Render diagnostics as a compiler-style report. `sources` maps a diagnostic's
/// `file` to its text; `color` picks the theme (never on when not a TTY).
pub fn render_text(diags: &[Diagnostic], sources: &BTreeMap<String, String>, color: bool) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    let mut out = String::new();
    for d in diags {
        let mut md = MietteDiagnostic::new(d.message.clone()).with_code(d.code).with_severity(match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        });
        if let Some(h) = &d.hint {
            md = md.with_help(h.clone());
        }
        let src = d.file.as_ref().and_then(|f| sources.get(f).map(|s| (f, s)));
        let report = match (src, d.pos) {
            (Some((file, text)), Some(pos)) => {
                let offset = pos.offset.min(text.len());
                let len = pos.len.min(text.len() - offset);
                md = md.with_label(LabeledSpan::new(d.label.clone().or(Some("here".into())), offset, len));
                miette::Report::new(md).with_source_code(NamedSource::new(file.clone(), text.clone()))
            }
            _ => {
                if !d.location().is_empty() {
                    md.message = format!("{}: {}", d.location(), md.message);
                }
                miette::Report::new(md)
            }
        };
        let mut s = String::new();
        if handler.render_report(&mut s, report.as_ref()).is_err() {
            s = format!("{}: {}\n", d.location(), d.message);
        }
        out.push_str(&s);
        out.push('\n');
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    out.push_str(&summary(errors, warnings));
    out.push('\n');
    out
}

fn summary(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, w: &str| if n == 1 { format!("{n} {w}") } else { format!("{n} {w}s") };
    format!("{}, {}", plural(errors, "error"), plural(warnings, "warning"))
}

/// Machine-readable form: `{"format_version": 1, "errors": N, "warnings": N, "diagnostics": [...]}`.
pub fn render_json(diags: &[Diagnostic]) -> serde_json::Value {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    serde_json::json!({
        "format_version": 1,
        "errors": errors,
        "warnings": diags.len() - errors,
        "diagnostics": diags,
    })
}

/// GitHub Actions workflow commands, one line per diagnostic:
/// `::error file=F,line=L,col=C,title=reconcile CODE::MESSAGE`, so a pull request shows
/// each problem inline at its line. Warnings use `::warning`. The hint is appended on
/// its own line of the annotation. Values are escaped as the runner expects (`%`, CR,
/// LF everywhere; `:` and `,` also in properties).
pub fn render_github(diags: &[Diagnostic]) -> String {
    fn data(s: &str) -> String {
        s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
    }
    fn prop(s: &str) -> String {
        data(s).replace(':', "%3A").replace(',', "%2C")
    }
    let mut out = String::new();
    for d in diags {
        let mut props = Vec::new();
        if let Some(f) = &d.file {
            props.push(format!("file={}", prop(f)));
        }
        if let Some(l) = d.line {
            props.push(format!("line={l}"));
        }
        if let Some(c) = d.column {
            props.push(format!("col={c}"));
        }
        props.push(format!("title={}", prop(&format!("reconcile {}", d.code))));
        let mut message = d.message.clone();
        if let Some(h) = &d.hint {
            message.push_str("\nhelp: ");
            message.push_str(h);
        }
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("::{kind} {}::{}\n", props.join(","), data(&message)));
    }
    out
}

#[cfg(test)]
mod github_tests {
    use super::*;

    #[test]
    fn github_commands_carry_location_and_escape_values() {
        let pos = Pos { line: 7, col: 3, offset: 0, len: 1 };
        let diags = vec![
            Diagnostic::error("schema", "unknown field `imag`, 100% sure")
                .hint("did you mean `image`?\nsee the docs")
                .at("environments/a,b/apps/x:y.yaml", Some(pos)),
            Diagnostic::warning("merge", "`null` deletes nothing"),
        ];
        assert_eq!(
            render_github(&diags),
            "::error file=environments/a%2Cb/apps/x%3Ay.yaml,line=7,col=3,title=reconcile schema::\
             unknown field `imag`, 100%25 sure%0Ahelp: did you mean `image`?%0Asee the docs\n\
             ::warning title=reconcile merge::`null` deletes nothing\n"
        );
    }
}
