//! The pure core stays pure: no module of it may reach for I/O, the clock or a
//! backend crate (ARCHITECTURE.md, "Boundary"). clippy.toml's `disallowed-methods` /
//! `disallowed-types` check the same thing on resolved paths; this test also catches
//! the crates clippy has no list for (tokio, bollard, etcd_client, git2) by name.
//!
//! Every file under the core's paths is read whole, subdirectories included. Only test
//! code is left out (it may use the filesystem for fixtures): an item carrying
//! `#[cfg(test)]` — `mod tests;` (and the file it names), `mod tests { … }`, a test-only
//! `fn` or `use` — and, since they cannot do I/O, comments and the contents of string
//! and char literals. Everything else is checked, including code after a test module.

use std::path::{Path, PathBuf};

/// The pure core, relative to `src/`: files, and directories read recursively.
const CORE: &[&str] = &["spec", "plan", "notify", "page", "import", "placement.rs", "model.rs", "diag.rs", "secret.rs"];

const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::env",
    "std::process",
    "std::net::Tcp",
    "std::net::Udp",
    "tokio",
    "bollard",
    "etcd_client",
    "git2",
    "SystemTime",
    "Instant::now",
];

const TEST_ATTR: &str = "#[cfg(test)]";

/// Production code of one Rust source file, and the test modules it declares without a body.
#[derive(Debug)]
struct Stripped {
    /// The text with test items, comments and literal contents replaced by spaces; same
    /// lines as the file, so a line number here is one there.
    code: String,
    /// Names of `#[cfg(test)] mod NAME;` declarations (their files are test code).
    test_mods: Vec<String>,
}

/// Comments and the contents of string and char literals blanked (newlines kept): what
/// is left is code, in which braces and `#[cfg(test)]` mean what they say.
fn mask_non_code(text: &str) -> Vec<char> {
    let c: Vec<char> = text.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in &mut out[from..to.min(c.len())] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let ident = |i: usize| i < c.len() && (c[i].is_alphanumeric() || c[i] == '_');
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                let end = c[i..].iter().position(|&x| x == '\n').map_or(c.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < c.len() && depth > 0 {
                    if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                        depth += 1;
                        j += 2;
                    } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            // Raw strings: r"…", r#"…"#, br"…" (the `r` not the end of an identifier).
            'r' if (i == 0 || !ident(i - 1) || (c[i - 1] == 'b' && (i < 2 || !ident(i - 2))))
                && matches!(c.get(i + 1), Some('"' | '#')) =>
            {
                let hashes = c[i + 1..].iter().take_while(|&&x| x == '#').count();
                let open = i + 1 + hashes;
                if c.get(open) != Some(&'"') {
                    i += 1; // `r#ident`, a raw identifier
                    continue;
                }
                let mut j = open + 1;
                while j < c.len() && !(c[j] == '"' && (1..=hashes).all(|h| c.get(j + h) == Some(&'#'))) {
                    j += 1;
                }
                blank(&mut out, open + 1, j);
                i = j + 1 + hashes;
            }
            '"' => {
                let mut j = i + 1;
                while j < c.len() && c[j] != '"' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            // A char literal ('x', '\n', '\u{7f}'), not a lifetime ('a).
            '\'' if c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'') => {
                let mut j = i + 1;
                while j < c.len() && c[j] != '\'' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The index just past the bracket that closes the one at `open` (`(`, `[` or `{`).
fn close_of(code: &[char], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, ch) in code.iter().enumerate().skip(open) {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// `text` without its test items, comments and literal contents (see the module docs).
fn production_code(text: &str) -> Stripped {
    let mut code = mask_non_code(text);
    let attr: Vec<char> = TEST_ATTR.chars().collect();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i + attr.len() <= code.len() {
        if code[i..i + attr.len()] != attr[..] {
            i += 1;
            continue;
        }
        // The item: more attributes, then up to a `;` outside brackets or a `{ … }` block.
        let mut j = i + attr.len();
        loop {
            while j < code.len() && code[j].is_whitespace() {
                j += 1;
            }
            if code.get(j) == Some(&'#') && code.get(j + 1) == Some(&'[') {
                j = close_of(&code, j + 1);
            } else {
                break;
            }
        }
        let head_start = j;
        let mut depth = 0usize;
        let end = loop {
            match code.get(j) {
                None => break code.len(),
                Some('(' | '[') => depth += 1,
                Some(')' | ']') => depth = depth.saturating_sub(1),
                Some(';') if depth == 0 => break j + 1,
                Some('{') if depth == 0 => break close_of(&code, j),
                _ => {}
            }
            j += 1;
        };
        let head: String = code[head_start..end].iter().collect();
        let words: Vec<&str> = head.split(|ch: char| !(ch.is_alphanumeric() || ch == '_')).collect();
        if head.trim_end().ends_with(';')
            && let Some(m) = words.iter().position(|w| *w == "mod")
            && let Some(name) = words[m + 1..].iter().find(|w| !w.is_empty())
        {
            test_mods.push((*name).to_string());
        }
        for ch in &mut code[i..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end;
    }
    Stripped { code: code.into_iter().collect(), test_mods }
}

/// The paths a `use` group names: `std::{io, net::{TcpStream}}` → `std::io`,
/// `std::net::TcpStream` (so a group cannot hide `std::fs` from a substring check).
fn expand_groups(code: &str) -> Vec<String> {
    fn expand(prefix: &str, group: &str, out: &mut Vec<String>) {
        let (mut depth, mut start) = (0, 0);
        let mut items = Vec::new();
        for (k, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        items.push(&group[start..]);
        for item in items.into_iter().filter(|s| !s.is_empty()) {
            match item.split_once("::{") {
                Some((head, rest)) => expand(&format!("{prefix}{head}::"), rest.strip_suffix('}').unwrap_or(rest), out),
                None => out.push(format!("{prefix}{item}")),
            }
        }
    }
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut p = 0;
    while p + 3 <= chars.len() {
        if chars[p..p + 3] != [':', ':', '{'] {
            p += 1;
            continue;
        }
        let head_start =
            chars[..p].iter().rposition(|ch| !(ch.is_alphanumeric() || *ch == '_' || *ch == ':')).map_or(0, |k| k + 1);
        let head: String = chars[head_start..p].iter().collect();
        let end = close_of(&chars, p + 2);
        let group: String = chars[p + 3..end.saturating_sub(1)].iter().filter(|ch| !ch.is_whitespace()).collect();
        expand(&format!("{head}::"), &group, &mut out);
        p += 3;
    }
    out
}

/// Every forbidden word in the production code of `text`, as `line: word`.
fn forbidden_in(text: &str) -> Vec<String> {
    let code = production_code(text).code;
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for word in FORBIDDEN.iter().filter(|w| line.contains(**w)) {
            found.push(format!("{}: {word}", n + 1));
        }
    }
    for path in expand_groups(&code) {
        for word in FORBIDDEN.iter().filter(|w| path.contains(**w)) {
            found.push(format!("`{path}` (in a use group): {word}"));
        }
    }
    found
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            rust_files(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    } else {
        assert!(path.exists(), "{} is not in the repo: update tidy.rs's CORE list", path.display());
    }
}

/// Where the files of `file`'s child modules live (Rust's module path rules).
fn child_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod" | "lib" | "main") | None => parent.to_path_buf(),
        Some(stem) => parent.join(stem),
    }
}

#[test]
fn core_modules_do_no_io() {
    let src = super::root().join("src");
    let mut files = Vec::new();
    for p in CORE {
        rust_files(&src.join(p), &mut files);
    }
    // Files of `#[cfg(test)] mod x;` declarations (and their own submodules) are test code.
    let mut texts = Vec::new();
    let mut test_code: Vec<PathBuf> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for m in production_code(&text).test_mods {
            test_code.push(child_dir(f).join(format!("{m}.rs")));
            test_code.push(child_dir(f).join(m));
        }
        texts.push((f, text));
    }
    let mut checked = 0;
    let mut bad = Vec::new();
    for (f, text) in &texts {
        if test_code.iter().any(|t| f.starts_with(t)) {
            continue;
        }
        checked += 1;
        let name = f.strip_prefix(super::root()).unwrap_or(f).display().to_string();
        bad.extend(forbidden_in(text).into_iter().map(|hit| format!("{name}:{hit}")));
    }
    assert!(checked > 10, "only {checked} core files found under {}", src.display());
    assert!(bad.is_empty(), "the pure core does I/O (file:line: forbidden word): {bad:#?}");
}

#[test]
fn the_stripper_removes_test_modules_and_keeps_the_code_after_them() {
    let sample = r####"use std::collections::BTreeMap;

#[cfg(test)]
mod tests {
    use std::fs;
    const CLOSE: &str = "}}} std::env";
    const RAW: &str = r#"} " }"#;
    const C: char = '}';
    const Q: char = '\'';
    /* a } in a comment, /* nested } */ */
    // and one } in a line comment
    fn lifetimes<'a>(s: &'a str) -> &'a str { if s.is_empty() { "{" } else { s } }
    #[test]
    fn t() { std::fs::read("x").unwrap(); }
}

fn after_the_tests() {
    let _ = std::process::id();
}
"####;
    let s = production_code(sample);
    assert!(s.code.contains("fn after_the_tests()"), "{}", s.code);
    assert!(!s.code.contains("mod tests") && !s.code.contains("fs"), "{}", s.code);
    assert_eq!(s.code.lines().count(), sample.lines().count(), "line numbers are kept");
    assert_eq!(forbidden_in(sample), ["18: std::process"]);
    assert!(s.test_mods.is_empty());
}

#[test]
fn the_stripper_handles_test_declarations_fns_and_uses() {
    let sample = "pub mod render;\n#[cfg(test)]\nmod tests;\n#[cfg(test)]\nuse std::fs;\n#[cfg(test)]\n#[allow(dead_code)]\nfn fixture(x: [u8; 2]) -> u8 { std::env::args().count() as u8 + x[0] }\nuse std::env;\n";
    let s = production_code(sample);
    assert_eq!(s.test_mods, ["tests"]);
    assert!(s.code.contains("pub mod render;"), "{}", s.code);
    assert_eq!(forbidden_in(sample), ["9: std::env"]);
}

#[test]
fn comments_and_strings_are_not_code_but_use_groups_are() {
    assert!(forbidden_in("//! uses tokio's clock in tests\nconst S: &str = \"std::fs\";\n").is_empty());
    assert_eq!(
        forbidden_in("use std::{\n    collections::BTreeMap,\n    fs,\n};\n"),
        ["`std::fs` (in a use group): std::fs"]
    );
    assert_eq!(
        forbidden_in("use std::{io, net::{IpAddr, TcpStream}};\n"),
        ["`std::net::TcpStream` (in a use group): std::net::Tcp"]
    );
    assert_eq!(forbidden_in("fn f() -> u64 { r#\"a\"#.len() as u64 + tokio::x() }\n"), ["1: tokio"]);
}
