//! A dynamically typed value with Python's data model, as PyYAML and pydantic see it.
//!
//! Study files are YAML 1.1 read the way PyYAML reads them, and llem's hashes are
//! taken over Python values (ints that are not floats, floats that may be NaN or
//! infinite, mappings that keep insertion order). `serde_json::Value` can hold none of
//! the non-finite floats and loses the int/float distinction on round trips, so the
//! study model, the grid and the hashes all work on this type instead.

use indexmap::IndexMap;

/// An ordered mapping with string keys, as Python's `dict` keeps insertion order.
pub type Map = IndexMap<String, Value>;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    Map(Map),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A number as f64 (ints widen; bools are not numbers here).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Python's type name for the value (`int`, `float`, `str`, `bool`, `list`, `dict`, `NoneType`).
    pub fn py_type_name(&self) -> &'static str {
        match self {
            Value::Null => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Seq(_) => "list",
            Value::Map(_) => "dict",
        }
    }

    /// Follows a dotted path through nested mappings; a missing step or a null gives `None`.
    pub fn get_path(&self, dotted: &str) -> Option<&Value> {
        let mut cur = self;
        for seg in dotted.split('.') {
            cur = cur.as_map()?.get(seg)?;
            if cur.is_null() {
                return None;
            }
        }
        Some(cur)
    }

    /// Converts to a `serde_json::Value`. Non-finite floats have no JSON form and become null;
    /// use [`crate::pyjson`] where they must survive.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(v) => serde_json::Value::Array(v.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Converts from a `serde_json::Value`, keeping the int/float distinction of the text.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                // Integers beyond i64 become floats, as they would in most JSON readers.
                match n.as_i64() {
                    Some(i) => Value::Int(i),
                    None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                }
            }
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::Seq(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_path_stops_at_null_and_missing() {
        let mut inner = Map::new();
        inner.insert("b".into(), Value::Int(3));
        inner.insert("n".into(), Value::Null);
        let mut top = Map::new();
        top.insert("a".into(), Value::Map(inner));
        let v = Value::Map(top);
        assert_eq!(v.get_path("a.b"), Some(&Value::Int(3)));
        assert_eq!(v.get_path("a.n"), None);
        assert_eq!(v.get_path("a.n.x"), None);
        assert_eq!(v.get_path("z"), None);
    }

    #[test]
    fn json_round_trip_keeps_int_and_float_apart() {
        let v = Value::from_json(&serde_json::json!({"i": 2, "f": 2.0, "s": [true, null]}));
        let m = v.as_map().unwrap();
        assert_eq!(m["i"], Value::Int(2));
        assert_eq!(m["f"], Value::Float(2.0));
        assert_eq!(
            v.to_json(),
            serde_json::json!({"i": 2, "f": 2.0, "s": [true, null]})
        );
    }
}
