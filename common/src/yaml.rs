//! A YAML 1.1 loader that yields the values PyYAML's `safe_load` yields, with positions.
//!
//! llem reads study files with PyYAML, so `yes` is a boolean, `1e-5` is a string, `017`
//! is 15 and `1:30` is 90 (FORMAT.md 2.1). yaml-rust2 only tokenises here: its event
//! parser tells plain scalars from quoted ones, and this module resolves plain scalars
//! with PyYAML's implicit resolvers, applies explicit `!!` tags, anchors, aliases and
//! `<<` merge keys, and records where every key was written so that errors can say
//! `study.yaml:12:5`.
//!
//! Two limits keep hostile input from exhausting the stack or memory, where PyYAML
//! would hit Python's recursion limit or share aliased objects: nesting deeper than
//! [`MAX_DEPTH`] and aliases that copy more than [`MAX_ALIAS_NODES`] nodes in all
//! (an alias of a list of aliases multiplies) are errors. Events are pulled from the
//! parser one at a time here, because yaml-rust2's own `load` recurses once per level.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::pyjson::float_repr;
use crate::value::{Map, Value};

/// Deepest nesting of mappings and sequences a document may have; a study needs a
/// handful of levels.
pub const MAX_DEPTH: usize = 64;

/// Most nodes that aliases may copy into a document, counted over every alias.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// A YAML file that could not be read as PyYAML would read it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct YamlError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Where each key (and each sequence item) of a document was written, 1-based.
///
/// A path is the list of mapping keys and sequence indices from the document root,
/// e.g. `["sweep", "task.max_output_tokens"]` or `["experiments", "2", "engine"]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spans {
    map: HashMap<Vec<String>, (usize, usize)>,
}

impl Spans {
    /// The (line, column) of the key at `path`, if it was written in the file.
    pub fn get<S: AsRef<str>>(&self, path: &[S]) -> Option<(usize, usize)> {
        let key: Vec<String> = path.iter().map(|s| s.as_ref().to_string()).collect();
        self.map.get(&key).copied()
    }

    /// The position of `path` or of its nearest written ancestor.
    pub fn nearest<S: AsRef<str>>(&self, path: &[S]) -> Option<(usize, usize)> {
        let mut key: Vec<String> = path.iter().map(|s| s.as_ref().to_string()).collect();
        loop {
            if let Some(p) = self.map.get(&key) {
                return Some(*p);
            }
            key.pop()?;
        }
    }

    fn insert(&mut self, path: Vec<String>, pos: (usize, usize)) {
        self.map.entry(path).or_insert(pos);
    }
}

/// A parsed document and the positions of its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `Value::Null` for an empty document.
    pub value: Value,
    pub spans: Spans,
}

/// Parses `text` (named `file` in errors) as PyYAML's `safe_load` does.
pub fn load(text: &str, file: &str) -> Result<Document, YamlError> {
    let mut b = Builder {
        file: file.to_string(),
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    // The whole stream is scanned even after the builder has failed, so that a syntax
    // error anywhere wins over a construction error, as in PyYAML (which composes the
    // document before constructing it); a failed builder ignores the events.
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| {
            let m = e.marker();
            YamlError {
                file: file.to_string(),
                line: m.line(),
                col: m.col() + 1,
                message: e.info().to_string(),
            }
        })?;
        let end = ev == Event::StreamEnd;
        b.on_event(ev, mark);
        if end {
            break;
        }
    }
    if let Some(err) = b.error {
        return Err(err);
    }
    if b.docs.len() > 1 {
        let (line, col) = b.second_doc.unwrap_or((1, 1));
        return Err(YamlError {
            file: file.to_string(),
            line,
            col,
            message: "expected a single document in the stream, but found another document".into(),
        });
    }
    Ok(Document {
        value: b.docs.pop().unwrap_or(Value::Null),
        spans: b.spans,
    })
}

/// Resolves one plain scalar as PyYAML's implicit resolvers do.
pub fn resolve_plain(s: &str) -> Value {
    match try_resolve_plain(s) {
        Ok(v) => v,
        Err(_) => Value::Str(s.to_string()),
    }
}

enum Entry {
    Pair(String, Value),
    Merge(Value),
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        seg: Option<String>,
    },
    Map {
        entries: Vec<Entry>,
        key: Option<(String, bool)>,
        anchor: usize,
        seg: Option<String>,
    },
}

/// The number of nodes in a value and how many levels of nesting it has.
#[derive(Clone, Copy, Debug, Default)]
struct Extent {
    nodes: usize,
    levels: usize,
}

impl Extent {
    fn of(v: &Value) -> Extent {
        let mut e = Extent::default();
        let mut todo = vec![(v, 0usize)];
        while let Some((v, level)) = todo.pop() {
            e.nodes += 1;
            match v {
                Value::Seq(items) => {
                    e.levels = e.levels.max(level + 1);
                    todo.extend(items.iter().map(|i| (i, level + 1)));
                }
                Value::Map(m) => {
                    e.levels = e.levels.max(level + 1);
                    todo.extend(m.values().map(|i| (i, level + 1)));
                }
                _ => {}
            }
        }
        e
    }
}

#[derive(Default)]
struct Builder {
    file: String,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, Extent)>,
    /// Nodes copied by aliases so far.
    alias_nodes: usize,
    docs: Vec<Value>,
    spans: Spans,
    error: Option<YamlError>,
    second_doc: Option<(usize, usize)>,
}

impl Builder {
    fn fail(&mut self, mark: &Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                file: self.file.clone(),
                line: mark.line(),
                col: mark.col() + 1,
                message,
            });
        }
    }

    /// Stores an anchored value with its extent, for the aliases that copy it.
    fn anchor(&mut self, anchor: usize, v: &Value) {
        if anchor > 0 {
            self.anchors.insert(anchor, (v.clone(), Extent::of(v)));
        }
    }

    /// Refuses a collection that would nest deeper than [`MAX_DEPTH`].
    fn check_depth(&mut self, mark: &Marker, levels: usize) -> bool {
        if self.stack.len() + levels > MAX_DEPTH {
            self.fail(
                mark,
                format!("mappings and sequences nest deeper than {MAX_DEPTH} levels here (a study needs only a few; look for an unclosed bracket or a runaway alias)"),
            );
            return false;
        }
        true
    }

    fn path(&self) -> Vec<String> {
        self.stack
            .iter()
            .filter_map(|f| match f {
                Frame::Seq { seg, .. } | Frame::Map { seg, .. } => seg.clone(),
            })
            .collect()
    }

    /// The path segment the next node will sit at, recording its position for sequences.
    fn next_seg(&mut self, mark: &Marker) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        let parent_path = self.path();
        match self.stack.last() {
            Some(Frame::Seq { items, .. }) => {
                let seg = items.len().to_string();
                let mut p = parent_path;
                p.push(seg.clone());
                self.spans.insert(p, pos);
                Some(seg)
            }
            Some(Frame::Map {
                key: Some((k, _)), ..
            }) => Some(k.clone()),
            _ => None,
        }
    }

    /// True when the next node is a mapping key.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn push_value(&mut self, v: Value, mark: &Marker) {
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    // This value is a key.
                    let is_merge = false;
                    let k = match key_string(&v) {
                        Some(k) => k,
                        None => {
                            self.fail(
                                mark,
                                "found unhashable key (a mapping key must be a scalar)".into(),
                            );
                            return;
                        }
                    };
                    *key = Some((k, is_merge));
                }
                Some((k, true)) => {
                    let _ = k;
                    entries.push(Entry::Merge(v));
                }
                Some((k, false)) => entries.push(Entry::Pair(k, v)),
            },
        }
    }

    fn scalar(
        &mut self,
        text: String,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<Tag>,
        mark: &Marker,
    ) {
        let is_key = self.expecting_key();
        if is_key && style == TScalarStyle::Plain && tag.is_none() && text == "<<" {
            if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                *key = Some(("<<".into(), true));
            }
            return;
        }
        let v = match construct_scalar(&text, style, tag.as_ref()) {
            Ok(v) => v,
            Err(msg) => {
                self.fail(mark, msg);
                Value::Str(text)
            }
        };
        if is_key {
            if let Some(k) = key_string(&v) {
                let mut p = self.path();
                p.push(k);
                self.spans.insert(p, (mark.line(), mark.col() + 1));
            }
        } else {
            self.next_seg(mark);
        }
        self.anchor(anchor, &v);
        self.push_value(v, mark);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                if !self.docs.is_empty() && self.second_doc.is_none() {
                    self.second_doc = Some((mark.line(), mark.col() + 1));
                }
            }
            Event::Scalar(text, style, anchor, tag) => self.scalar(text, style, anchor, tag, &mark),
            Event::Alias(id) => {
                let Some(&(_, extent)) = self.anchors.get(&id) else {
                    self.fail(&mark, "found undefined alias".into());
                    return;
                };
                self.alias_nodes = self.alias_nodes.saturating_add(extent.nodes);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    self.fail(
                        &mark,
                        format!("aliases copy more than {MAX_ALIAS_NODES} nodes into the document (an alias of a list of aliases multiplies; write the values out or use fewer levels of aliases)"),
                    );
                    return;
                }
                if !self.check_depth(&mark, extent.levels) {
                    return;
                }
                let v = self.anchors[&id].0.clone();
                if !self.expecting_key() {
                    self.next_seg(&mark);
                }
                self.push_value(v, &mark);
            }
            Event::SequenceStart(anchor, tag) => {
                if self.expecting_key() {
                    self.fail(
                        &mark,
                        "found unhashable key (a sequence cannot be a mapping key)".into(),
                    );
                    return;
                }
                if let Some(t) = &tag {
                    if !is_core_tag(t, "seq") {
                        self.fail(
                            &mark,
                            format!(
                                "could not determine a constructor for the tag '{}{}'",
                                t.handle, t.suffix
                            ),
                        );
                        return;
                    }
                }
                if !self.check_depth(&mark, 1) {
                    return;
                }
                let seg = self.next_seg(&mark);
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                    seg,
                });
            }
            Event::MappingStart(anchor, tag) => {
                if self.expecting_key() {
                    self.fail(
                        &mark,
                        "found unhashable key (a mapping cannot be a mapping key)".into(),
                    );
                    return;
                }
                if let Some(t) = &tag {
                    if !is_core_tag(t, "map") {
                        self.fail(
                            &mark,
                            format!(
                                "could not determine a constructor for the tag '{}{}'",
                                t.handle, t.suffix
                            ),
                        );
                        return;
                    }
                }
                if !self.check_depth(&mark, 1) {
                    return;
                }
                let seg = self.next_seg(&mark);
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    anchor,
                    seg,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    let v = Value::Seq(items);
                    self.anchor(anchor, &v);
                    self.push_value(v, &mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    entries, anchor, ..
                }) = self.stack.pop()
                {
                    let v = match flatten_mapping(entries) {
                        Ok(m) => Value::Map(m),
                        Err(msg) => {
                            self.fail(&mark, msg);
                            return;
                        }
                    };
                    self.anchor(anchor, &v);
                    self.push_value(v, &mark);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// PyYAML's `flatten_mapping`: merged pairs first (earlier merge sources win over
/// later ones), then the explicit pairs; a repeated key keeps its first position and
/// its last value, as a Python dict does.
fn flatten_mapping(entries: Vec<Entry>) -> Result<Map, String> {
    let mut merged: Vec<(String, Value)> = Vec::new();
    let mut explicit: Vec<(String, Value)> = Vec::new();
    for e in entries {
        match e {
            Entry::Pair(k, v) => explicit.push((k, v)),
            Entry::Merge(Value::Map(m)) => merged.extend(m),
            Entry::Merge(Value::Seq(items)) => {
                let mut sub: Vec<Map> = Vec::new();
                for item in items {
                    match item {
                        Value::Map(m) => sub.push(m),
                        _ => {
                            return Err(
                                "while constructing a mapping: expected a mapping for merging"
                                    .into(),
                            )
                        }
                    }
                }
                for m in sub.into_iter().rev() {
                    merged.extend(m);
                }
            }
            Entry::Merge(_) => return Err(
                "while constructing a mapping: expected a mapping or list of mappings for merging"
                    .into(),
            ),
        }
    }
    let mut out = Map::new();
    for (k, v) in merged.into_iter().chain(explicit) {
        out.insert(k, v);
    }
    Ok(out)
}

/// The string form of a mapping key (Python keys may be ints or bools; JSON dumps them as text).
fn key_string(v: &Value) -> Option<String> {
    Some(match v {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => {
            if *b {
                "true".into()
            } else {
                "false".into()
            }
        }
        Value::Null => "null".into(),
        Value::Float(f) => float_repr(*f),
        Value::Seq(_) | Value::Map(_) => return None,
    })
}

fn is_core_tag(t: &Tag, name: &str) -> bool {
    t.handle == "tag:yaml.org,2002:" && t.suffix == name
}

fn construct_scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(t) = tag {
        if t.handle == "!" && t.suffix.is_empty() || t.handle.is_empty() && t.suffix == "!" {
            return Ok(Value::Str(text.to_string()));
        }
        if t.handle != "tag:yaml.org,2002:" {
            return Err(format!(
                "could not determine a constructor for the tag '{}{}'",
                t.handle, t.suffix
            ));
        }
        return match t.suffix.as_str() {
            "str" => Ok(Value::Str(text.to_string())),
            "null" => Ok(Value::Null),
            "bool" => match text.to_ascii_lowercase().as_str() {
                "yes" | "true" | "on" => Ok(Value::Bool(true)),
                "no" | "false" | "off" => Ok(Value::Bool(false)),
                _ => Err(format!("cannot construct a boolean from '{text}'")),
            },
            "int" => {
                construct_int(text).ok_or_else(|| format!("invalid literal for int(): '{text}'"))
            }
            "float" => construct_float(text)
                .ok_or_else(|| format!("could not convert string to float: '{text}'")),
            "timestamp" => Ok(Value::Str(text.to_string())),
            other => Err(format!(
                "could not determine a constructor for the tag 'tag:yaml.org,2002:{other}'"
            )),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text.to_string()));
    }
    try_resolve_plain(text)
}

fn try_resolve_plain(s: &str) -> Result<Value, String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Value::Bool(true))
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Value::Bool(false))
        }
        "=" => {
            return Err(
                "could not determine a constructor for the tag 'tag:yaml.org,2002:value'".into(),
            )
        }
        _ => {}
    }
    if is_yaml_int(s) {
        return construct_int(s).ok_or_else(|| format!("integer out of range: '{s}'"));
    }
    if is_yaml_float(s) {
        return construct_float(s)
            .ok_or_else(|| format!("could not convert string to float: '{s}'"));
    }
    if let Some(t) = timestamp_text(s) {
        return Ok(Value::Str(t));
    }
    Ok(Value::Str(s.to_string()))
}

fn strip_sign(s: &str) -> (bool, &str) {
    if let Some(r) = s.strip_prefix('-') {
        (true, r)
    } else if let Some(r) = s.strip_prefix('+') {
        (false, r)
    } else {
        (false, s)
    }
}

fn all_in(s: &str, f: impl Fn(char) -> bool) -> bool {
    s.chars().all(f)
}

/// `[0-5]?[0-9]` (a sexagesimal part after the first).
fn is_sexa_part(p: &str) -> bool {
    let b = p.as_bytes();
    match b.len() {
        1 => b[0].is_ascii_digit(),
        2 => (b'0'..=b'5').contains(&b[0]) && b[1].is_ascii_digit(),
        _ => false,
    }
}

fn is_yaml_int(s: &str) -> bool {
    let (_, r) = strip_sign(s);
    if r.is_empty() {
        return false;
    }
    if let Some(b) = r.strip_prefix("0b") {
        return !b.is_empty() && all_in(b, |c| c == '0' || c == '1' || c == '_');
    }
    if let Some(h) = r.strip_prefix("0x") {
        return !h.is_empty() && all_in(h, |c| c.is_ascii_hexdigit() || c == '_');
    }
    if r == "0" {
        return true;
    }
    if let Some(o) = r.strip_prefix('0') {
        return !o.is_empty() && all_in(o, |c| ('0'..='7').contains(&c) || c == '_');
    }
    let first = r.as_bytes()[0];
    if !(b'1'..=b'9').contains(&first) {
        return false;
    }
    let mut parts = r.split(':');
    let head = parts.next().unwrap_or("");
    if !all_in(head, |c| c.is_ascii_digit() || c == '_') {
        return false;
    }
    parts.all(is_sexa_part)
}

fn is_yaml_float(s: &str) -> bool {
    // [-+]?\.(inf|Inf|INF) and \.(nan|NaN|NAN)
    if matches!(s, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (_, r) = strip_sign(s);
    if matches!(r, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let digit_us = |c: char| c.is_ascii_digit() || c == '_';
    let exp_ok = |e: &str| -> bool {
        // [eE][-+][0-9]+
        let mut ch = e.chars();
        matches!(ch.next(), Some('e') | Some('E'))
            && matches!(ch.next(), Some('-') | Some('+'))
            && {
                let rest = ch.as_str();
                !rest.is_empty() && all_in(rest, |c| c.is_ascii_digit())
            }
    };
    // \.[0-9][0-9_]*(exp)? (no sign)
    if let Some(frac) = s.strip_prefix('.') {
        let Some(first) = frac.chars().next() else {
            return false;
        };
        if !first.is_ascii_digit() {
            return false;
        }
        let end = frac.find(['e', 'E']).unwrap_or(frac.len());
        return all_in(&frac[..end], digit_us) && (end == frac.len() || exp_ok(&frac[end..]));
    }
    let Some(first) = r.chars().next() else {
        return false;
    };
    if !first.is_ascii_digit() {
        return false;
    }
    // [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
    if r.contains(':') {
        let Some((int_part, frac)) = r.split_once('.') else {
            return false;
        };
        let mut parts = int_part.split(':');
        let head = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        return all_in(head, digit_us)
            && !rest.is_empty()
            && rest.iter().all(|p| is_sexa_part(p))
            && all_in(frac, digit_us);
    }
    // [-+]?[0-9][0-9_]*\.[0-9_]*(exp)?
    let Some((int_part, rest)) = r.split_once('.') else {
        return false;
    };
    if !all_in(int_part, digit_us) {
        return false;
    }
    let end = rest.find(['e', 'E']).unwrap_or(rest.len());
    all_in(&rest[..end], digit_us) && (end == rest.len() || exp_ok(&rest[end..]))
}

fn construct_int(text: &str) -> Option<Value> {
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, r) = strip_sign(&cleaned);
    let magnitude: i128 = if r == "0" {
        0
    } else if let Some(b) = r.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = r.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if r.starts_with('0') {
        i128::from_str_radix(r, 8).ok()?
    } else if r.contains(':') {
        let mut acc: i128 = 0;
        for part in r.split(':') {
            acc = acc
                .checked_mul(60)?
                .checked_add(part.parse::<i128>().ok()?)?;
        }
        acc
    } else {
        r.parse::<i128>().ok()?
    };
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok().map(Value::Int)
}

fn construct_float(text: &str) -> Option<Value> {
    let cleaned: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    let (neg, r) = strip_sign(&cleaned);
    let sign = if neg { -1.0 } else { 1.0 };
    let v = if r == ".inf" {
        f64::INFINITY
    } else if r == ".nan" {
        f64::NAN
    } else if r.contains(':') {
        let mut digits: Vec<f64> = Vec::new();
        for part in r.split(':') {
            digits.push(part.parse::<f64>().ok()?);
        }
        digits.reverse();
        let mut base = 1.0;
        let mut acc = 0.0;
        for d in digits {
            acc += d * base;
            base *= 60.0;
        }
        acc
    } else {
        // Python's float() accepts "12." and ".5"; Rust's parser does too.
        r.parse::<f64>().ok()?
    };
    Some(Value::Float(sign * v))
}

/// PyYAML's timestamp resolver; dates come back as `str(date)`, datetimes as `str(datetime)`.
fn timestamp_text(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let is_date = |t: &[u8]| {
        t.len() == 10
            && t[..4].iter().all(u8::is_ascii_digit)
            && t[4] == b'-'
            && t[5..7].iter().all(u8::is_ascii_digit)
            && t[7] == b'-'
            && t[8..10].iter().all(u8::is_ascii_digit)
    };
    if is_date(b) {
        return Some(s.to_string());
    }
    // yyyy-m?m-d?d(T|t|[ \t]+)h?h:mm:ss(.frac)?([ \t]*(Z|[-+]hh(:mm)?))?
    let sep = s.find(['T', 't', ' ', '\t'])?;
    let (date, rest) = s.split_at(sep);
    let dparts: Vec<&str> = date.split('-').collect();
    if dparts.len() != 3
        || dparts[0].len() != 4
        || !(1..=2).contains(&dparts[1].len())
        || !(1..=2).contains(&dparts[2].len())
        || !dparts.iter().all(|p| all_in(p, |c| c.is_ascii_digit()))
    {
        return None;
    }
    let rest = rest.trim_start_matches(['T', 't', ' ', '\t']);
    let tz_at = rest.find(['Z', '+', '-', ' ', '\t']).unwrap_or(rest.len());
    let (time, tz) = rest.split_at(tz_at);
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (time, None),
    };
    let tparts: Vec<&str> = hms.split(':').collect();
    if tparts.len() != 3
        || !(1..=2).contains(&tparts[0].len())
        || tparts[1].len() != 2
        || tparts[2].len() != 2
        || !tparts.iter().all(|p| all_in(p, |c| c.is_ascii_digit()))
        || !frac.is_none_or(|f| all_in(f, |c| c.is_ascii_digit()))
    {
        return None;
    }
    let tz = tz.trim_start_matches([' ', '\t']);
    let tz_text = if tz.is_empty() {
        String::new()
    } else if tz == "Z" {
        "+00:00".to_string()
    } else {
        // The first character, not the first byte: `10:00:00 é` is a string.
        let (sign, body) = match tz.strip_prefix('+') {
            Some(body) => ("+", body),
            None => ("-", tz.strip_prefix('-')?),
        };
        let (hh, mm) = body.split_once(':').unwrap_or((body, "00"));
        let digits = |p: &str| all_in(p, |c| c.is_ascii_digit());
        if !(1..=2).contains(&hh.len()) || mm.len() != 2 || !digits(hh) || !digits(mm) {
            return None;
        }
        format!("{sign}{:0>2}:{mm}", hh)
    };
    let micro = frac.map(|f| {
        let mut f = f.to_string();
        f.truncate(6);
        while f.len() < 6 {
            f.push('0');
        }
        f
    });
    let micro_text = match micro {
        Some(m) if m != "000000" => format!(".{m}"),
        _ => String::new(),
    };
    Some(format!(
        "{}-{:0>2}-{:0>2} {:0>2}:{}:{}{}{}",
        dparts[0], dparts[1], dparts[2], tparts[0], tparts[1], tparts[2], micro_text, tz_text
    ))
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            crate::pyjson::dumps(&self.value, &crate::pyjson::DumpOptions::default())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Value {
        let doc = load(&format!("k: {s}\n"), "t.yaml").unwrap();
        doc.value.as_map().unwrap()["k"].clone()
    }

    #[test]
    fn scalars_resolve_as_yaml_1_1() {
        assert_eq!(one("yes"), Value::Bool(true));
        assert_eq!(one("Off"), Value::Bool(false));
        assert_eq!(one("y"), Value::Str("y".into()));
        assert_eq!(one("~"), Value::Null);
        assert_eq!(one(""), Value::Null);
        assert_eq!(one("1e-5"), Value::Str("1e-5".into()));
        assert_eq!(one("1.0e-5"), Value::Float(1.0e-5));
        assert_eq!(one("1.5e+3"), Value::Float(1500.0));
        assert_eq!(one("12."), Value::Float(12.0));
        assert_eq!(one(".5"), Value::Float(0.5));
        assert_eq!(one("017"), Value::Int(15));
        assert_eq!(one("0o17"), Value::Str("0o17".into()));
        assert_eq!(one("0x1F"), Value::Int(31));
        assert_eq!(one("0b101"), Value::Int(5));
        assert_eq!(one("1_000"), Value::Int(1000));
        assert_eq!(one("1:30"), Value::Int(90));
        assert_eq!(one("190:20:30.15"), Value::Float(685230.15));
        assert_eq!(one("2024-01-01"), Value::Str("2024-01-01".into()));
        assert_eq!(
            one("2024-01-01 10:00:00"),
            Value::Str("2024-01-01 10:00:00".into())
        );
        assert_eq!(one("+12"), Value::Int(12));
        // Found by the bounded fuzz pass: a non-ASCII character where the time zone
        // goes was sliced through the middle.
        assert_eq!(
            one("2024-01-01 10:00:00 \u{e9}"),
            Value::Str("2024-01-01 10:00:00 \u{e9}".into())
        );
        assert_eq!(
            one("2024-01-01 10:00:00 +ab:cd"),
            Value::Str("2024-01-01 10:00:00 +ab:cd".into())
        );
        assert_eq!(
            one("2024-1-1 1:00:00 -5"),
            Value::Str("2024-01-01 01:00:00-05:00".into())
        );
        assert_eq!(one("-.inf"), Value::Float(f64::NEG_INFINITY));
        assert!(matches!(one(".NaN"), Value::Float(f) if f.is_nan()));
        assert_eq!(one("'yes'"), Value::Str("yes".into()));
        assert_eq!(one("\"017\""), Value::Str("017".into()));
        assert_eq!(one("!!str 12"), Value::Str("12".into()));
        assert_eq!(one("!!float 1"), Value::Float(1.0));
        assert_eq!(one("-0"), Value::Int(0));
        assert_eq!(one("0"), Value::Int(0));
        assert_eq!(one("08"), Value::Str("08".into()));
        assert_eq!(one("1.2.3"), Value::Str("1.2.3".into()));
    }

    #[test]
    fn anchors_merges_and_duplicates() {
        let text = "a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  q: 3\n  r: 4\nc: 1\nc: 2\nd: *x\n";
        let v = load(text, "t.yaml").unwrap().value;
        let m = v.as_map().unwrap();
        let b = m["b"].as_map().unwrap();
        assert_eq!(b.keys().collect::<Vec<_>>(), vec!["p", "q", "r"]);
        assert_eq!(b["q"], Value::Int(3));
        assert_eq!(m["c"], Value::Int(2));
        assert_eq!(m["d"], m["a"]);
        let text = "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n";
        let v = load(text, "t.yaml").unwrap().value;
        let c = v.as_map().unwrap()["c"].as_map().unwrap().clone();
        assert_eq!(c["x"], Value::Int(1));
        assert_eq!(c["y"], Value::Int(2));
    }

    #[test]
    fn spans_point_at_keys() {
        let text = "task:\n  model: gpt2\nsweep:\n  task.max_output_tokens: [1, 2]\nexperiments:\n  - engine: vllm\n";
        let d = load(text, "s.yaml").unwrap();
        assert_eq!(d.spans.get(&["task", "model"]), Some((2, 3)));
        assert_eq!(
            d.spans.get(&["sweep", "task.max_output_tokens"]),
            Some((4, 3))
        );
        assert_eq!(d.spans.get(&["experiments", "0", "engine"]), Some((6, 5)));
        assert_eq!(d.spans.nearest(&["task", "model", "zzz"]), Some((2, 3)));
    }

    // Found by the bounded fuzz pass (fuzz/): ten levels of ten aliases each made
    // 10^10 copies and never returned.
    #[test]
    fn alias_bombs_are_refused_with_the_limit() {
        let mut text = String::from("a0: &a0 [x, x]\n");
        for l in 1..10 {
            let items = vec![format!("*a{}", l - 1); 10].join(", ");
            text.push_str(&format!("a{l}: &a{l} [{items}]\n"));
        }
        let err = load(&text, "bomb.yaml").unwrap_err();
        assert!(err.message.contains("more than 100000 nodes"), "{err}");
        assert!(err.to_string().starts_with("bomb.yaml:"), "{err}");
        // Below the limit, aliases copy as before.
        let v = load("a: &a [1, 2]\nb: [*a, *a]\n", "ok.yaml")
            .unwrap()
            .value;
        assert_eq!(
            v.get_path("b"),
            Some(&Value::Seq(vec![v.as_map().unwrap()["a"].clone(); 2]))
        );
    }

    // Found reading yaml-rust2 while writing the fuzz targets: 10,000 nested block
    // sequences (`- - - ... x`) overflowed the stack in its recursive `load`.
    #[test]
    fn deep_nesting_is_refused_with_the_limit() {
        let block = format!("{}x\n", "- ".repeat(100_000));
        let err = load(&block, "deep.yaml").unwrap_err();
        assert!(err.message.contains("deeper than 64 levels"), "{err}");
        let flow = format!("k: {}1{}\n", "[".repeat(80), "]".repeat(80));
        let err = load(&flow, "deep.yaml").unwrap_err();
        assert!(err.message.contains("deeper than 64 levels"), "{err}");
        // An alias counts the levels it brings with it.
        let aliased = format!("a: &a {}1{}\nb: [[[*a]]]\n", "[".repeat(62), "]".repeat(62));
        let err = load(&aliased, "deep.yaml").unwrap_err();
        assert!(err.message.contains("deeper than 64 levels"), "{err}");
        assert_eq!(err.line, 2, "{err}");
        let ok = format!("k: {}1{}\n", "[".repeat(63), "]".repeat(63));
        assert!(load(&ok, "ok.yaml").is_ok());
    }

    #[test]
    fn a_syntax_error_wins_over_an_earlier_construction_error() {
        let err = load("a: !!int x\nb: [1\n", "t.yaml").unwrap_err();
        assert!(!err.message.contains("int()"), "{err}");
    }

    #[test]
    fn errors_carry_position() {
        let err = load("a: [1, 2\nb: 3\n", "bad.yaml").unwrap_err();
        assert_eq!(err.file, "bad.yaml");
        assert!(err.line >= 1);
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
        let err = load("a: *nope\n", "bad.yaml").unwrap_err();
        assert!(
            err.message.contains("alias") || err.message.contains("anchor"),
            "{err}"
        );
    }
}
