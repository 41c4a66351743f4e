//! llem's engine rule corpora (FORMAT.md 5) as data, and their predicate language.
//!
//! `rules_corpus.json` is the three 0.7.0 `rules.yaml` files reduced to what
//! evaluation needs (id, severity, ordered match fields, message template,
//! normalised fields), in file order. Error rules reject a config (a skip with
//! `rule <id>`); dormant rules canonicalise it before hashing and dedup (5.3, 7.6).

use std::sync::OnceLock;

use crate::pyjson;
use crate::study::py::{py_eq, to_str, truthy};
use crate::study::schema;
use crate::study::validate::FieldError;
use crate::value::{Map, Value};

const CORPUS_JSON: &str = include_str!("rules_corpus.json");

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Dormant,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    pub engine: String,
    pub severity: Severity,
    /// Ordered `path -> predicate` pairs (a bare value means equality).
    pub fields: Vec<(String, Value)>,
    pub message: Option<String>,
    pub normalised_fields: Vec<String>,
}

/// A dormant normalisation that was applied (FORMAT.md 9, `dormant_observations`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DormantObservation {
    pub engine: String,
    pub rule_id: String,
    pub field_path: String,
    pub normalisation: String,
}

/// The rules of one engine, in evaluation order (empty for engines without a corpus).
pub fn rules_for(engine: &str) -> &'static [Rule] {
    static CORPUS: OnceLock<Vec<(String, Vec<Rule>)>> = OnceLock::new();
    let corpus = CORPUS.get_or_init(|| {
        let doc = pyjson::parse(CORPUS_JSON).expect("built-in rules corpus is valid JSON");
        let mut out = Vec::new();
        for (engine, body) in doc.as_map().expect("corpus is a mapping") {
            let mut rules = Vec::new();
            let list = match body.as_map().and_then(|b| b.get("rules")) {
                Some(Value::Seq(l)) => l.clone(),
                _ => Vec::new(),
            };
            for r in list {
                let m = r.as_map().expect("rule is a mapping");
                let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                rules.push(Rule {
                    id: s("id").unwrap_or_default(),
                    engine: engine.clone(),
                    severity: if s("severity").as_deref() == Some("dormant") {
                        Severity::Dormant
                    } else {
                        Severity::Error
                    },
                    fields: m
                        .get("fields")
                        .and_then(Value::as_map)
                        .map(|f| {
                            f.iter()
                                .map(|(k, v)| (k.clone(), canonical_ops(v)))
                                .collect()
                        })
                        .unwrap_or_default(),
                    message: s("message"),
                    normalised_fields: match m.get("normalised_fields") {
                        Some(Value::Seq(v)) => v
                            .iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    },
                });
            }
            out.push((engine.clone(), rules));
        }
        out
    });
    corpus
        .iter()
        .find(|(e, _)| e == engine)
        .map(|(_, r)| r.as_slice())
        .unwrap_or(&[])
}

fn canonical_ops(spec: &Value) -> Value {
    match spec {
        Value::Map(m) => Value::Map(
            m.iter()
                .map(|(k, v)| {
                    let k = match k.as_str() {
                        "equals" => "==",
                        "not_equal" => "!=",
                        other => other,
                    };
                    (k.to_string(), v.clone())
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Resolves a dotted path; a missing step or a null anywhere gives `Null`.
pub fn resolve(config: &Value, path: &str) -> Value {
    config.get_path(path).cloned().unwrap_or(Value::Null)
}

fn resolve_refs(
    spec: &Value,
    config: &Value,
    pred_path: &str,
    refs: &mut Vec<(String, Value)>,
) -> Value {
    match spec {
        Value::Str(s) if s.starts_with('@') => {
            let target = &s[1..];
            let full = if target.contains('.') {
                target.to_string()
            } else {
                match pred_path.rsplit_once('.') {
                    Some((parent, _)) => format!("{parent}.{target}"),
                    None => target.to_string(),
                }
            };
            let v = resolve(config, &full);
            let leaf = target.rsplit('.').next().unwrap_or(target).to_string();
            refs.push((leaf, v.clone()));
            v
        }
        Value::Map(m) => Value::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), resolve_refs(v, config, pred_path, refs)))
                .collect(),
        ),
        Value::Seq(items) => Value::Seq(
            items
                .iter()
                .map(|v| resolve_refs(v, config, pred_path, refs))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn ordered(a: &Value, b: &Value, op: fn(std::cmp::Ordering) -> bool) -> bool {
    use Value::*;
    match (a, b) {
        (Null, _) | (_, Null) | (Bool(_), _) | (_, Bool(_)) => false,
        (Str(x), Str(y)) => op(x.as_str().cmp(y.as_str())),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y).is_some_and(op),
            _ => false,
        },
    }
}

fn type_names(spec: &Value) -> Vec<String> {
    match spec {
        Value::Str(s) => vec![s.clone()],
        Value::Seq(items) => items.iter().map(to_str).collect(),
        other => vec![to_str(other)],
    }
}

fn contains(list: &Value, a: &Value) -> bool {
    match list {
        Value::Seq(items) => items.iter().any(|x| py_eq(a, x)),
        _ => false,
    }
}

fn int_pair(a: &Value, b: &Value) -> Option<(i64, i64)> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some((*x, *y)),
        _ => None,
    }
}

/// Evaluates one predicate (FORMAT.md 5.1).
pub fn evaluate(actual: &Value, spec: &Value) -> bool {
    let Value::Map(ops) = spec else {
        return py_eq(actual, spec);
    };
    use std::cmp::Ordering::*;
    ops.iter().all(|(op, b)| match op.as_str() {
        "==" => py_eq(actual, b),
        "!=" => !actual.is_null() && !b.is_null() && !py_eq(actual, b),
        "<" => ordered(actual, b, |o| o == Less),
        "<=" => ordered(actual, b, |o| o != Greater),
        ">" => ordered(actual, b, |o| o == Greater),
        ">=" => ordered(actual, b, |o| o != Less),
        "in" => contains(b, actual),
        "not_in" => !actual.is_null() && !contains(b, actual),
        "present" => !actual.is_null(),
        "absent" => actual.is_null(),
        "type_is" => !actual.is_null() && type_names(b).iter().any(|n| n == actual.py_type_name()),
        "type_is_not" => {
            !actual.is_null() && !type_names(b).iter().any(|n| n == actual.py_type_name())
        }
        "divisible_by" => int_pair(actual, b).is_some_and(|(x, y)| y != 0 && x.rem_euclid(y) == 0),
        "not_divisible_by" => {
            int_pair(actual, b).is_some_and(|(x, y)| y != 0 && x.rem_euclid(y) != 0)
        }
        _ => false,
    })
}

/// A successful match: the matched values and referenced fields, for messages.
pub struct RuleMatch {
    pub matched: Vec<(String, Value)>,
    pub refs: Vec<(String, Value)>,
    pub declared_value: Value,
}

impl Rule {
    pub fn try_match(&self, config: &Value) -> Option<RuleMatch> {
        let mut matched = Vec::new();
        let mut refs = Vec::new();
        let mut last = Value::Null;
        for (path, spec) in &self.fields {
            let actual = resolve(config, path);
            let mut these_refs = Vec::new();
            let spec = resolve_refs(spec, config, path, &mut these_refs);
            if !evaluate(&actual, &spec) {
                return None;
            }
            matched.push((path.clone(), actual.clone()));
            refs.extend(these_refs);
            last = actual;
        }
        Some(RuleMatch {
            matched,
            refs,
            declared_value: last,
        })
    }

    /// The rendered message template (`str.format` with permissive fallback).
    pub fn render(&self, m: &RuleMatch) -> String {
        let Some(t) = &self.message else {
            return "<no message template>".into();
        };
        let mut args: Vec<(String, Value)> = vec![
            ("declared_value".into(), m.declared_value.clone()),
            ("effective_value".into(), Value::Null),
            ("rule_id".into(), Value::Str(self.id.clone())),
        ];
        args.extend(m.matched.iter().cloned());
        for (p, v) in &m.matched {
            let leaf = p.rsplit('.').next().unwrap_or(p).to_string();
            if !args.iter().any(|(k, _)| *k == leaf) {
                args.push((leaf, v.clone()));
            }
        }
        for (leaf, v) in &m.refs {
            if !args.iter().any(|(k, _)| k == leaf) {
                args.push((leaf.clone(), v.clone()));
            }
        }
        format_py(t, &args).unwrap_or_else(|| t.clone())
    }

    /// `{path: strip}` targets of a dormant rule (FORMAT.md 5.3).
    pub fn strip_paths(&self) -> Vec<String> {
        if !self.normalised_fields.is_empty() {
            let anchor = self.fields.last().map(|(p, _)| p.as_str()).unwrap_or("");
            return self
                .normalised_fields
                .iter()
                .map(|n| {
                    if n.contains('.') || self.fields.is_empty() {
                        n.clone()
                    } else {
                        match anchor.rsplit_once('.') {
                            Some((parent, _)) => format!("{parent}.{n}"),
                            None => n.clone(),
                        }
                    }
                })
                .collect();
        }
        self.fields
            .iter()
            .filter_map(|(p, spec)| {
                let Value::Map(ops) = spec else { return None };
                let ne = ops.contains_key("!=");
                let present = ops.get("present").is_some_and(truthy) && !ops.contains_key("in");
                (ne || present).then(|| p.clone())
            })
            .collect()
    }
}

/// Python `str.format` for `{name}` placeholders; `None` when a name is unknown.
fn format_py(t: &str, args: &[(String, Value)]) -> Option<String> {
    let mut out = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut name = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                    name.push(d);
                }
                let v = args.iter().find(|(k, _)| *k == name)?;
                out.push_str(&to_str(&v.1));
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// The first matching error rule of `engine` as a model-level error.
pub fn first_error(engine: &str, config: &Value) -> Option<FieldError> {
    for rule in rules_for(engine) {
        if rule.severity != Severity::Error {
            continue;
        }
        if let Some(m) = rule.try_match(config) {
            return Some(FieldError::value_error(
                &[],
                &format!("[{}] {}", rule.id, rule.render(&m)),
            ));
        }
    }
    None
}

/// Applies the dormant rules of the config's engine to a fixpoint (FORMAT.md 7.6).
pub fn canonicalise(
    engine: &str,
    config: &Value,
    observations: &mut Vec<DormantObservation>,
) -> Value {
    let dormant: Vec<&Rule> = rules_for(engine)
        .iter()
        .filter(|r| r.severity == Severity::Dormant)
        .collect();
    let mut current = config.clone();
    for _ in 0..10 {
        let mut fired = false;
        for rule in &dormant {
            if rule.try_match(&current).is_none() {
                continue;
            }
            for path in rule.strip_paths() {
                if resolve(&current, &path).is_null() {
                    continue;
                }
                strip(&mut current, &path);
                fired = true;
                observations.push(DormantObservation {
                    engine: rule.engine.clone(),
                    rule_id: rule.id.clone(),
                    field_path: path.clone(),
                    normalisation: "stripped".into(),
                });
            }
        }
        if !fired {
            return current;
        }
    }
    current
}

/// Strips a field: a declared field becomes null, any other key is removed.
fn strip(config: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split('.').collect();
    let (leaf, parents) = parts.split_last().expect("non-empty path");
    let declared = schema::model_at(parents).is_some_and(|m| m.field(leaf).is_some());
    let mut cur = config;
    for p in parents {
        match cur.as_map_mut().and_then(|m| m.get_mut(*p)) {
            Some(next) => cur = next,
            None => return,
        }
    }
    let Some(map): Option<&mut Map> = cur.as_map_mut() else {
        return;
    };
    if declared {
        if map.contains_key(*leaf) {
            map.insert(leaf.to_string(), Value::Null);
        }
    } else {
        map.shift_remove(*leaf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_load_with_expected_counts() {
        assert_eq!(rules_for("transformers").len(), 50);
        assert_eq!(rules_for("vllm").len(), 29);
        assert_eq!(rules_for("tensorrt").len(), 29);
        assert!(rules_for("synthetic").is_empty());
    }

    #[test]
    fn predicates_follow_python_semantics() {
        let spec = pyjson::parse(r#"{"<": 0}"#).unwrap();
        assert!(evaluate(&Value::Int(-1), &spec));
        assert!(!evaluate(&Value::Bool(false), &spec));
        assert!(!evaluate(&Value::Str("a".into()), &spec));
        let spec = pyjson::parse(r#"{"not_in": [null, true, false, "never"]}"#).unwrap();
        assert!(!evaluate(&Value::Int(1), &spec));
        assert!(evaluate(&Value::Int(2), &spec));
        assert!(evaluate(&Value::Int(-1), &Value::Int(-1)));
    }
}
