//! Python `json` module compatible text for [`Value`]s.
//!
//! llem's hashes are SHA-256 digests of `json.dumps(..., sort_keys=True)` output, so
//! the bytes must match CPython exactly: `repr` floats (shortest round trip, exponent
//! form outside 1e-4..1e16), bare `NaN`/`Infinity` tokens, `\uXXXX` escapes with
//! lower-case hex and surrogate pairs, and the separators Python picks for each mode.
//! [`parse`] reads JSON text back the way `json.loads` does (ints stay ints, `NaN` and
//! `Infinity` accepted, key order kept).

use crate::value::{Map, Value};

/// Options of Python's `json.dumps` that the fleet uses.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    /// Sort mapping keys by code point at every level.
    pub sort_keys: bool,
    /// `None` = one line; `Some(n)` = pretty-printed with n spaces per level.
    pub indent: Option<usize>,
    /// Escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    /// Separators `(",", ":")` instead of the defaults.
    pub compact: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            sort_keys: false,
            indent: None,
            ensure_ascii: true,
            compact: false,
        }
    }
}

/// `json.dumps(v, sort_keys=True)`: the text that llem's config hashes are taken over (FORMAT 8.1).
pub fn dumps_sorted(v: &Value) -> String {
    dumps(
        v,
        &DumpOptions {
            sort_keys: true,
            ..DumpOptions::default()
        },
    )
}

/// `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` (FORMAT 8.3).
pub fn dumps_resolved(v: &Value) -> String {
    dumps(
        v,
        &DumpOptions {
            sort_keys: true,
            indent: None,
            ensure_ascii: false,
            compact: true,
        },
    )
}

/// `json.dumps(v, indent=n)` as `json.dump(obj, f, indent=n)` writes it.
pub fn dumps_indent(v: &Value, indent: usize) -> String {
    dumps(
        v,
        &DumpOptions {
            indent: Some(indent),
            ..DumpOptions::default()
        },
    )
}

/// Serialises `v` as Python's `json.dumps` would with the given options.
pub fn dumps(v: &Value, opts: &DumpOptions) -> String {
    let mut out = String::new();
    write_value(&mut out, v, opts, 0);
    out
}

/// Python's `repr(float)`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    format_float(f)
}

/// The JSON token for a float (`NaN`, `Infinity`, `-Infinity` or the repr).
pub fn float_json(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        format_float(f)
    }
}

fn format_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-5".
    let sci = format!("{:e}", f);
    let (mant, exp) = sci.split_once('e').expect("exponent in {:e} output");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let decpt = exp + 1; // digits before the point
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let decpt = decpt as usize;
            if digits.len() <= decpt {
                out.push_str(&digits);
                for _ in digits.len()..decpt {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..decpt]);
                out.push('.');
                out.push_str(&digits[decpt..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    }
    out
}

/// A JSON string literal as Python writes it.
pub fn quote_str(s: &str, ensure_ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s, ensure_ascii);
    out
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, opts: &DumpOptions, level: usize) {
    let (item_sep, key_sep) = match (opts.compact, opts.indent.is_some()) {
        (true, _) => (",", ":"),
        (false, true) => (",", ": "),
        (false, false) => (", ", ": "),
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&float_json(*f)),
        Value::Str(s) => write_str(out, s, opts.ensure_ascii),
        Value::Seq(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, opts, level + 1);
                write_value(out, item, opts, level + 1);
            }
            newline(out, opts, level);
            out.push(']');
        }
        Value::Map(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, opts, level + 1);
                write_str(out, k, opts.ensure_ascii);
                out.push_str(key_sep);
                write_value(out, item, opts, level + 1);
            }
            newline(out, opts, level);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, opts: &DumpOptions, level: usize) {
    if let Some(n) = opts.indent {
        out.push('\n');
        for _ in 0..(n * level) {
            out.push(' ');
        }
    }
}

/// Parses JSON text as Python's `json.loads` does: ints stay ints, `NaN`/`Infinity`/
/// `-Infinity` are accepted, key order is kept and a repeated key keeps its last value.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = JsonParser {
        s: text.as_bytes(),
        i: 0,
        text,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("extra data"));
    }
    Ok(v)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl JsonParser<'_> {
    /// `what` at the current position, with the column in characters as Python
    /// counts it. After a bad escape the position can sit inside a multi-byte
    /// character; it is taken back to that character's start.
    fn err(&self, what: &str) -> String {
        let mut end = self.i.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &self.text[..end];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |p| p + 1);
        let col = before[line_start..].chars().count() + 1;
        format!("{what} at line {line} column {col}")
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        let Some(&c) = self.s.get(self.i) else {
            return Err(self.err("expecting value"));
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut m = Map::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Value::Map(m));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return Err(self.err("expecting property name enclosed in double quotes"));
                    }
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        return Err(self.err("expecting ':' delimiter"));
                    }
                    self.ws();
                    let v = self.value()?;
                    m.insert(k, v);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(Value::Map(m));
                    }
                    return Err(self.err("expecting ',' delimiter"));
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Value::Seq(items));
                }
                loop {
                    self.ws();
                    items.push(self.value()?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(Value::Seq(items));
                    }
                    return Err(self.err("expecting ',' delimiter"));
                }
            }
            b'"' => Ok(Value::Str(self.string()?)),
            _ => {
                if self.eat("null") {
                    Ok(Value::Null)
                } else if self.eat("true") {
                    Ok(Value::Bool(true))
                } else if self.eat("false") {
                    Ok(Value::Bool(false))
                } else if self.eat("NaN") {
                    Ok(Value::Float(f64::NAN))
                } else if self.eat("Infinity") {
                    Ok(Value::Float(f64::INFINITY))
                } else if self.eat("-Infinity") {
                    Ok(Value::Float(f64::NEG_INFINITY))
                } else {
                    self.number()
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits_start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        if self.i == digits_start {
            self.i = start;
            return Err(self.err("expecting value"));
        }
        let mut is_float = false;
        if self.s.get(self.i) == Some(&b'.')
            && self.s.get(self.i + 1).is_some_and(|c| c.is_ascii_digit())
        {
            is_float = true;
            self.i += 1;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
        }
        if matches!(self.s.get(self.i), Some(b'e') | Some(b'E')) {
            let save = self.i;
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+') | Some(b'-')) {
                self.i += 1;
            }
            let exp_start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if self.i == exp_start {
                self.i = save;
            } else {
                is_float = true;
            }
        }
        let text = &self.text[start..self.i];
        if is_float {
            text.parse::<f64>()
                .map(Value::Float)
                .map_err(|_| self.err("bad number"))
        } else {
            match text.parse::<i64>() {
                Ok(i) => Ok(Value::Int(i)),
                Err(_) => text
                    .parse::<f64>()
                    .map(Value::Float)
                    .map_err(|_| self.err("bad number")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        // Exactly four hex digits: `from_str_radix` alone would take "+abc".
        let h = self
            .text
            .get(self.i..self.i + 4)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("invalid \\uXXXX escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xd800..0xdc00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xdc00..0xe000).contains(&lo) {
                                    0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                                } else {
                                    self.i = save;
                                    hi
                                }
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                        }
                        _ => return Err(self.err("invalid \\escape")),
                    }
                }
                _ => {
                    let rest = &self.text[self.i..];
                    let ch = rest.chars().next().expect("non-empty rest");
                    out.push(ch);
                    self.i += ch.len_utf8();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (7200.0, "7200.0"),
            (0.1, "0.1"),
            (12.897000000000002, "12.897000000000002"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e-4, "0.0001"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (123456.789, "123456.789"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(*f), *want, "{f:?}");
        }
        assert_eq!(float_json(f64::NAN), "NaN");
        assert_eq!(float_json(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn strings_escape_like_python() {
        assert_eq!(
            quote_str("a\"b\\c/\n\t\u{7f}é😀\u{1}", true),
            r#""a\"b\\c/\n\t\u007f\u00e9\ud83d\ude00\u0001""#
        );
        assert_eq!(quote_str("é\u{7f}\u{1}", false), "\"é\u{7f}\\u0001\"");
    }

    #[test]
    fn indent_layout_matches_python() {
        let v = parse(r#"{"a": [1, 2.0], "b": {}, "c": [], "d": {"e": null}}"#).unwrap();
        assert_eq!(
            dumps_indent(&v, 1),
            "{\n \"a\": [\n  1,\n  2.0\n ],\n \"b\": {},\n \"c\": [],\n \"d\": {\n  \"e\": null\n }\n}"
        );
        assert_eq!(
            dumps_sorted(&v),
            r#"{"a": [1, 2.0], "b": {}, "c": [], "d": {"e": null}}"#
        );
        assert_eq!(
            dumps_resolved(&v),
            r#"{"a":[1,2.0],"b":{},"c":[],"d":{"e":null}}"#
        );
    }

    // Found by libFuzzer (`cargo fuzz run study_parser`): a backslash before a
    // multi-byte character left the error position inside it, and the message
    // sliced the text there.
    #[test]
    fn errors_inside_multibyte_text_name_the_character_column() {
        assert_eq!(
            parse("{\"a\": \"\\\u{e9}\"}").unwrap_err(),
            "invalid \\escape at line 1 column 9"
        );
        assert_eq!(
            parse("[\"\u{e9}\u{e9}\",\n \"\u{e9}\", x]").unwrap_err(),
            "expecting value at line 2 column 7"
        );
        assert_eq!(
            parse("\"\\u+abc\"").unwrap_err(),
            "invalid \\uXXXX escape at line 1 column 4"
        );
    }

    #[test]
    fn parse_keeps_types_and_order() {
        let v = parse(r#"{"z": 1, "a": [NaN, -Infinity, 1e5, "\u00e9\ud83d\ude00"], "z2": 1.0}"#)
            .unwrap();
        let m = v.as_map().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["z", "a", "z2"]);
        assert_eq!(m["z"], Value::Int(1));
        assert_eq!(m["z2"], Value::Float(1.0));
        let a = match &m["a"] {
            Value::Seq(a) => a,
            _ => panic!(),
        };
        assert!(matches!(a[0], Value::Float(f) if f.is_nan()));
        assert_eq!(a[2], Value::Float(100000.0));
        assert_eq!(a[3], Value::Str("é😀".into()));
        assert!(parse("{\"a\": }").is_err());
    }

    #[test]
    fn worked_example_hash_of_minimal_config() {
        let text = r#"{"engine": "transformers", "measurement": {"baseline": {"cache_ttl_seconds": 7200.0, "drift_threshold": 0.1, "duration_seconds": 30.0, "enabled": true, "strategy": "validated", "validation_interval": 5}, "energy_sampler": "auto", "latency_profiling": false, "measurement_methodology": "total", "measurement_window": null, "steady_state_auto_detect": false, "warmup_discard_fraction": 0.1, "warmup_discard_seconds": null}, "offline": null, "passthrough_kwargs": null, "sampling_preset": null, "server": null, "serving_mode": "offline", "task": {"dataset": {"n_prompts": 100, "order": "interleaved", "source": "aienergyscore"}, "max_input_tokens": 256, "max_output_tokens": 256, "model": "gpt2", "random_seed": 42}, "tensorrt": null, "transformers": null, "vllm": null}"#;
        let v = parse(text).unwrap();
        let dumped = dumps_sorted(&v);
        assert_eq!(dumped, text);
        assert_eq!(dumped.len(), 767);
        let digest = Sha256::digest(dumped.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.starts_with("a0767dbccba6fc45"), "{hex}");
    }
}
