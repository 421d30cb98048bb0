//! YAML text → `serde_json::Value` plus a span index.
//!
//! We parse with `saphyr` (YAML 1.2 core schema, pure Rust, spans on every node,
//! duplicate keys rejected, alias expansion budgeted against "billion laughs") and
//! convert to JSON values so that one representation serves schema validation,
//! merging and typed deserialisation. The [`SpanIndex`] maps every JSON pointer
//! back to the line and column of its key and of its value, which is how schema
//! and semantic errors get their `file:line:col`.
//!
//! Invariant: pure. No I/O; the caller hands in the text.

use std::collections::HashMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

/// A position in a source file: 1-based line and column, 0-based byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
    pub offset: usize,
    pub len: usize,
}

/// JSON pointer → position of the key (for object members) and of the value.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    pub key: HashMap<String, Pos>,
    pub value: HashMap<String, Pos>,
}

impl SpanIndex {
    /// Where to point for `ptr`: its value if known, else its key, else the
    /// nearest ancestor that is known (a missing field points at its parent).
    pub fn locate(&self, ptr: &str) -> Option<Pos> {
        if let Some(pos) = self.value.get(ptr).or_else(|| self.key.get(ptr)) {
            return Some(*pos);
        }
        let mut p = ptr.to_string();
        loop {
            let cut = p.rfind('/')?;
            p.truncate(cut);
            // An ancestor is shown by its key (`health:`), the root by its first line.
            if let Some(pos) = self.key.get(&p).or_else(|| self.value.get(&p)) {
                return Some(*pos);
            }
        }
    }

    /// Like [`locate`](Self::locate) but prefers the key: used for "unknown field" errors.
    pub fn locate_key(&self, ptr: &str) -> Option<Pos> {
        self.key.get(ptr).copied().or_else(|| self.locate(ptr))
    }

    /// True when this document has something at exactly `ptr`.
    pub fn has(&self, ptr: &str) -> bool {
        self.value.contains_key(ptr) || self.key.contains_key(ptr)
    }
}

/// A parsed YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    pub index: SpanIndex,
}

/// Why a text is not a usable YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub message: String,
    pub hint: Option<String>,
    pub pos: Pos,
}

/// The most nodes one file may have (after alias expansion). Specs are small;
/// this bounds memory for hostile input on top of saphyr's alias budget.
const MAX_NODES: usize = 50_000;
/// The deepest nesting accepted.
const MAX_DEPTH: usize = 64;

/// Escape one JSON-pointer segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Parse exactly one YAML document from `bytes`.
///
/// # Errors
/// Invalid UTF-8, a syntax error, an empty file, several documents, non-string
/// keys, tags, YAML 1.1 merge keys (`<<`) and over-large documents are errors
/// with a position and a hint.
pub fn parse(bytes: &[u8]) -> Result<Document, YamlError> {
    let src = std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let col = good.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        YamlError {
            message: "file is not valid UTF-8".into(),
            hint: Some("save the file as UTF-8".into()),
            pos: Pos { line, col, offset: e.valid_up_to(), len: 1 },
        }
    })?;
    parse_str(src)
}

/// Parse exactly one YAML document from `src`.
///
/// # Errors
/// See [`parse`].
pub fn parse_str(src: &str) -> Result<Document, YamlError> {
    parse_inner(src, false)
}

/// Like [`parse_str`], but YAML 1.1 merge keys (`<<: *anchor`, `<<: [*a, *b]`) are
/// expanded, keys written in the mapping itself taking precedence: for docker compose
/// files (`import compose`), where they are common. Spec files never allow them.
///
/// # Errors
/// See [`parse`]; a merge key whose value is not a mapping (or a list of them) too.
pub fn parse_str_merging(src: &str) -> Result<Document, YamlError> {
    parse_inner(src, true)
}

fn parse_inner(src: &str, merge_keys: bool) -> Result<Document, YamlError> {
    let offsets = CharOffsets::new(src);
    // From the &str itself (saphyr's `load_from_str` goes through a char iterator and a
    // buffer: about twice the time). Marks count chars either way.
    let docs = MarkedYaml::load_from_parser(&mut saphyr_parser::Parser::new_from_str(src)).map_err(|e| {
        let m = e.marker();
        let offset = offsets.byte(m.index());
        YamlError {
            message: format!("invalid YAML: {}", e.info()),
            hint: Some(syntax_hint(e.info())),
            pos: Pos { line: m.line(), col: m.col() + 1, offset, len: 1 },
        }
    })?;
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        return Err(YamlError {
            message: "file is empty".into(),
            hint: Some("a spec file needs at least apiVersion, kind and name".into()),
            pos: Pos { line: 1, col: 1, offset: 0, len: 0 },
        });
    };
    if let Some(extra) = docs.next() {
        let m = extra.span.start;
        return Err(YamlError {
            message: "more than one YAML document in the file".into(),
            hint: Some("put each app in its own file under apps/; remove the `---` separator".into()),
            pos: Pos { line: m.line(), col: m.col() + 1, offset: offsets.byte(m.index()), len: 3 },
        });
    }
    if matches!(doc.data, YamlData::Value(Scalar::Null)) {
        return Err(YamlError {
            message: "file is empty".into(),
            hint: Some("a spec file needs at least apiVersion, kind and name".into()),
            pos: Pos { line: 1, col: 1, offset: 0, len: 0 },
        });
    }
    let mut conv = Converter { offsets: &offsets, index: SpanIndex::default(), nodes: 0, merge_keys };
    let value = conv.convert(&doc, "", 0)?;
    Ok(Document { value, index: conv.index })
}

fn syntax_hint(info: &str) -> String {
    if info.contains("duplicate") || info.contains("duplicated") {
        "each key may appear once in a mapping; remove or rename one of them".into()
    } else if info.contains("tab") {
        "YAML indentation must use spaces, not tabs".into()
    } else if info.contains("alias") {
        "anchors and aliases may not expand to more than 100000 nodes".into()
    } else {
        "check indentation, quoting and that every `:` in a value is quoted".into()
    }
}

/// saphyr reports character indices; miette wants byte offsets.
struct CharOffsets<'a> {
    src: &'a str,
    ascii: bool,
}

impl<'a> CharOffsets<'a> {
    fn new(src: &'a str) -> Self {
        Self { src, ascii: src.is_ascii() }
    }
    fn byte(&self, char_index: usize) -> usize {
        if self.ascii {
            return char_index.min(self.src.len());
        }
        self.src.char_indices().nth(char_index).map_or(self.src.len(), |(b, _)| b)
    }
}

struct Converter<'a> {
    offsets: &'a CharOffsets<'a>,
    index: SpanIndex,
    nodes: usize,
    merge_keys: bool,
}

impl Converter<'_> {
    fn pos(&self, n: &MarkedYaml<'_>) -> Pos {
        let start = self.offsets.byte(n.span.start.index());
        let end = self.offsets.byte(n.span.end.index()).max(start);
        // Collections span many lines; point at their first line only.
        let len = match &n.data {
            YamlData::Sequence(_) | YamlData::Mapping(_) => 0,
            _ => end - start,
        };
        Pos { line: n.span.start.line(), col: n.span.start.col() + 1, offset: start, len }
    }

    fn err(&self, n: &MarkedYaml<'_>, message: String, hint: &str) -> YamlError {
        YamlError { message, hint: Some(hint.into()), pos: self.pos(n) }
    }

    fn convert(&mut self, n: &MarkedYaml<'_>, ptr: &str, depth: usize) -> Result<Value, YamlError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.err(
                n,
                "document is too large".into(),
                "a spec file may have at most 50000 nodes; split it or remove repeated aliases",
            ));
        }
        if depth > MAX_DEPTH {
            return Err(self.err(
                n,
                "document is nested too deeply".into(),
                "specs never need more than 64 levels of nesting",
            ));
        }
        let pos = self.pos(n);
        self.index.value.insert(ptr.to_string(), pos);
        Ok(match &n.data {
            YamlData::Value(s) => scalar(s),
            YamlData::Representation(s, _, _) => Value::String(s.to_string()),
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, c) in items.iter().enumerate() {
                    out.push(self.convert(c, &format!("{ptr}/{i}"), depth + 1)?);
                }
                Value::Array(out)
            }
            YamlData::Mapping(m) => {
                let mut o = Map::new();
                if self.merge_keys {
                    self.merge_into(&mut o, m, ptr, depth)?;
                }
                for (k, v) in m.iter() {
                    if self.merge_keys && is_merge_key(k) {
                        continue;
                    }
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                        YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                        _ => {
                            return Err(self.err(
                                k,
                                "mapping keys must be plain strings".into(),
                                "quote the key, e.g. \"key\": value",
                            ));
                        }
                    };
                    if key == "<<" {
                        return Err(self.err(
                            k,
                            "YAML merge keys (`<<`) are not supported".into(),
                            "use `extends` between environments, or repeat the keys; YAML 1.2 has no merge keys",
                        ));
                    }
                    let child = format!("{ptr}/{}", escape(&key));
                    self.index.key.insert(child.clone(), self.pos(k));
                    let val = self.convert(v, &child, depth + 1)?;
                    o.insert(key, val);
                }
                Value::Object(o)
            }
            YamlData::Tagged(tag, _) => {
                return Err(self.err(
                    n,
                    format!("YAML tags are not supported (found !{})", tag.suffix),
                    "remove the tag; write the value plainly",
                ));
            }
            YamlData::Alias(_) | YamlData::BadValue => {
                return Err(self.err(n, "invalid YAML value".into(), "check anchors and aliases"));
            }
        })
    }
}

impl Converter<'_> {
    /// Expand the merge keys (`<<`) of mapping `m` into `o` before its own keys are
    /// converted, so that its own keys (and their positions) win; of several merged
    /// mappings the first wins, as YAML 1.1 says.
    fn merge_into(
        &mut self,
        o: &mut Map<String, Value>,
        m: &saphyr::AnnotatedMapping<'_, MarkedYaml<'_>>,
        ptr: &str,
        depth: usize,
    ) -> Result<(), YamlError> {
        for (k, v) in m.iter().filter(|(k, _)| is_merge_key(k)) {
            let own = self.index.value.get(ptr).copied();
            let merged = self.convert(v, ptr, depth + 1)?;
            if let Some(own) = own {
                self.index.value.insert(ptr.to_string(), own);
            }
            let maps: Vec<Map<String, Value>> = match merged {
                Value::Object(one) => vec![one],
                Value::Array(many) if many.iter().all(Value::is_object) => {
                    many.into_iter().filter_map(|x| x.as_object().cloned()).collect()
                }
                _ => Vec::new(),
            };
            if maps.is_empty() {
                return Err(self.err(
                    k,
                    "a merge key needs a mapping".into(),
                    "write `<<: *anchor` where the anchor names a mapping",
                ));
            }
            for (mk, mv) in maps.into_iter().flatten() {
                o.entry(mk).or_insert(mv);
            }
        }
        Ok(())
    }
}

fn is_merge_key(k: &MarkedYaml<'_>) -> bool {
    matches!(&k.data, YamlData::Value(Scalar::String(s)) if s == "<<")
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::from(*i),
        Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_maps_pointers_to_lines() {
        let d = parse_str("a: 1\nb:\n  c: [x, y]\n  d: \"q\"\n").unwrap();
        assert_eq!(d.value["b"]["c"][1], "y");
        assert_eq!(d.index.locate("/b/d").unwrap().line, 4);
        assert_eq!(d.index.locate_key("/b/c").unwrap().line, 3);
        assert_eq!(d.index.locate("/b/zzz").unwrap().line, 2);
    }

    #[test]
    fn yaml12_scalars_and_errors() {
        let d = parse_str("enabled: yes\nmode: 0755\n").unwrap();
        assert_eq!(d.value["enabled"], "yes");
        let e = parse_str("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2, "{e:?}");
        assert!(parse_str("").unwrap_err().message.contains("empty"));
        assert!(parse_str("a: 1\n---\nb: 2\n").unwrap_err().message.contains("more than one"));
        assert!(parse_str("x: &a {k: 1}\ny:\n  <<: *a\n").unwrap_err().message.contains("merge keys"));
        let e = parse(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!((e.pos.line, e.message.as_str()), (2, "file is not valid UTF-8"));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse_str(&s).is_err());
    }

    #[test]
    fn non_ascii_offsets_are_bytes() {
        let d = parse_str("é: ü\nb: 2\n").unwrap();
        let p = d.index.locate("/b").unwrap();
        assert_eq!(&"é: ü\nb: 2\n"[p.offset..p.offset + p.len], "2");
    }
}
