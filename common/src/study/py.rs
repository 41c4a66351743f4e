//! Python semantics the port needs: equality, truthiness, `repr`/`str`, and difflib.

use crate::pyjson::float_repr;
use crate::value::Value;

/// Python `==` (1 == 1.0 == True; dict/list compare element-wise).
pub fn py_eq(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (Null, Null) => true,
        (Str(x), Str(y)) => x == y,
        (Seq(x), Seq(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q)),
        (Map(x), Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// A number (bools count, as in Python).
pub fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Python truthiness.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Seq(s) => !s.is_empty(),
        Value::Map(m) => !m.is_empty(),
    }
}

/// Python `repr` of a string.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python `repr` of a value.
pub fn repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => {
            if *b {
                "True".into()
            } else {
                "False".into()
            }
        }
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_repr(*f),
        Value::Str(s) => repr_str(s),
        Value::Seq(items) => format!(
            "[{}]",
            items.iter().map(repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", repr_str(k), repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python `str` of a value (strings bare, everything else as `repr`).
pub fn to_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => repr(other),
    }
}

/// `difflib.SequenceMatcher(None, a, b).ratio()` (no autojunk below 200 items).
pub fn ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let matches = matching_chars(&a, 0, a.len(), &b, 0, b.len());
    2.0 * matches as f64 / total as f64
}

fn matching_chars(a: &[char], alo: usize, ahi: usize, b: &[char], blo: usize, bhi: usize) -> usize {
    let (i, j, k) = longest_match(a, alo, ahi, b, blo, bhi);
    if k == 0 {
        return 0;
    }
    let mut n = k;
    if alo < i && blo < j {
        n += matching_chars(a, alo, i, b, blo, j);
    }
    if i + k < ahi && j + k < bhi {
        n += matching_chars(a, i + k, ahi, b, j + k, bhi);
    }
    n
}

/// difflib's `find_longest_match` without junk: longest block, earliest in a, then in b.
fn longest_match(
    a: &[char],
    alo: usize,
    ahi: usize,
    b: &[char],
    blo: usize,
    bhi: usize,
) -> (usize, usize, usize) {
    let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0);
    let mut j2len: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (i, ai) in a.iter().enumerate().take(ahi).skip(alo) {
        let mut newj2len = std::collections::HashMap::new();
        for (j, bj) in b.iter().enumerate().take(bhi).skip(blo) {
            if ai != bj {
                continue;
            }
            let k = if j > 0 {
                j2len.get(&(j - 1)).copied().unwrap_or(0)
            } else {
                0
            } + 1;
            newj2len.insert(j, k);
            if k > bestsize {
                besti = i + 1 - k;
                bestj = j + 1 - k;
                bestsize = k;
            }
        }
        j2len = newj2len;
    }
    (besti, bestj, bestsize)
}

/// `difflib.get_close_matches(word, possibilities, n=1, cutoff)`.
pub fn close_match<'a>(word: &str, possibilities: &[&'a str], cutoff: f64) -> Option<&'a str> {
    let mut best: Option<(f64, &'a str)> = None;
    for p in possibilities {
        let r = ratio(p, word);
        if r >= cutoff {
            let better = match best {
                None => true,
                Some((br, bs)) => r > br || (r == br && *p > bs),
            };
            if better {
                best = Some((r, p));
            }
        }
    }
    best.map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difflib_ratio_and_close_matches() {
        assert!((ratio("abcd", "bcde") - 0.75).abs() < 1e-12);
        assert_eq!(
            close_match(
                "max_output_token",
                &["max_output_tokens", "max_input_tokens", "model"],
                0.6
            ),
            Some("max_output_tokens")
        );
        assert_eq!(close_match("zzz", &["model"], 0.6), None);
    }

    #[test]
    fn python_equality_and_repr() {
        assert!(py_eq(&Value::Int(1), &Value::Float(1.0)));
        assert!(py_eq(&Value::Bool(true), &Value::Int(1)));
        assert!(!py_eq(&Value::Null, &Value::Bool(false)));
        assert_eq!(repr(&Value::Str("it's".into())), "\"it's\"");
        assert_eq!(
            repr(&Value::Seq(vec![Value::Str("a".into()), Value::Null])),
            "['a', None]"
        );
    }
}
