//! The whole config loader: `spec::validate` on a small repo made from the
//! input, then both diagnostic renderers.
//!
//! The input is split on `SEP` into at most `PATHS.len()` files, mapped onto
//! `PATHS` in order (the last file keeps any further separators). An empty
//! piece leaves that file out of the snapshot, so inputs can also describe
//! repos with missing files; an empty *file* is written as a lone newline.
//!
//! Checks: no panic (in loading, merging, schema validation, semantic checks,
//! template rendering, placement, or miette's rendering of the spans), and the
//! libFuzzer time and memory limits.
//!
//! Set `RECONCILE_FUZZ_DEBUG=1` to print the snapshot and the rendered report
//! (useful with `cargo fuzz run load <file>` when triaging or checking seeds).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use reconcile::diag;
use reconcile::spec::{self, RepoSnapshot};

/// Separator between files in one input (also in `seed.sh` and `load.dict`).
const SEP: &[u8] = b"\n#--\n";

const PATHS: [&str; 6] = [
    "environments/base/environment.yaml",
    "environments/base/apps/api.yaml",
    "environments/prod/environment.yaml",
    "environments/prod/apps/api.yaml",
    "environments/prod/templates/lb.j2",
    "environments/base/apps/web.yaml",
];

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(PATHS.len());
    let mut rest = data;
    while out.len() + 1 < PATHS.len() {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut files = BTreeMap::new();
    for (path, content) in PATHS.iter().zip(split(data)) {
        if !content.is_empty() {
            files.insert((*path).to_string(), content.to_vec());
        }
    }
    let snap = RepoSnapshot { files, origin: Default::default() };
    let debug = std::env::var_os("RECONCILE_FUZZ_DEBUG").is_some();
    if debug {
        for (p, c) in &snap.files {
            eprintln!("--- {p}\n{}", String::from_utf8_lossy(c));
        }
    }
    let Ok((loaded, diags)) = spec::validate(&snap, None) else {
        // Only `validate(_, Some(env))` can name an unknown environment.
        panic!("validate(_, None) returned UnknownEnv");
    };
    let text = diag::render_text(&diags, &spec::sources(&snap), false);
    let json = diag::render_json(&diags);
    let json = serde_json::to_string(&json);
    if debug {
        eprintln!(
            "=== environments: {:?}, loaded: {:?}\n{text}\n{}",
            loaded.names,
            loaded.envs.keys().collect::<Vec<_>>(),
            json.unwrap_or_default()
        );
    }
});
