//! Sweep, group, range-shorthand and `experiments:` expansion (FORMAT.md 6.5-7.4).
//!
//! Produces raw (unvalidated) experiment mappings in llem's order. Each raw config
//! also says whether its active engine section is still the very mapping of the
//! shared fixed fields, so that the preset side effect of 7.5 can be reproduced.

use crate::study::schema::ENGINES;
use crate::value::{Map, Value};

/// A raw config and whether its engine section `e` is shared with the fixed fields.
#[derive(Clone, Debug)]
pub struct RawConfig {
    pub map: Map,
    /// `Some(e)`: `map[e]` is the fixed fields' own `e` mapping (shared by reference in llem).
    pub shared_section: Option<String>,
}

/// A sweep problem, named by its sweep key.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepError {
    pub key: String,
    pub message: String,
    pub empty_axis: bool,
}

fn err(key: &str, message: impl Into<String>) -> SweepError {
    SweepError {
        key: key.to_string(),
        message: message.into(),
        empty_axis: false,
    }
}

/// llem's `deep_merge`: overlay wins; mappings merge recursively.
pub fn deep_merge(base: &Map, overlay: &Map) -> Map {
    let mut out = base.clone();
    for (k, v) in overlay {
        match (out.get(k), v) {
            (Some(Value::Map(b)), Value::Map(o)) => {
                let merged = deep_merge(b, o);
                out.insert(k.clone(), Value::Map(merged));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// `{"a.b.c": v}` -> `{a: {b: {c: v}}}`.
pub fn unflatten(key: &str, value: &Value) -> Map {
    let parts: Vec<&str> = key.split('.').collect();
    let mut v = value.clone();
    for p in parts[1..].iter().rev() {
        let mut m = Map::new();
        m.insert((*p).to_string(), v);
        v = Value::Map(m);
    }
    let mut top = Map::new();
    top.insert(parts[0].to_string(), v);
    top
}

fn strip_other_sections(m: &Map, engine: &str) -> Map {
    m.iter()
        .filter(|(k, _)| !ENGINES.contains(&k.as_str()) || *k == engine)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn engine_scope(key: &str) -> Option<&'static str> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    parts.next()?;
    ENGINES.iter().copied().find(|e| *e == first)
}

fn is_group(key: &str, v: &Value) -> Result<bool, SweepError> {
    let Value::Seq(items) = v else {
        return Ok(false);
    };
    if items.is_empty() || !items.iter().any(|i| matches!(i, Value::Map(_))) {
        return Ok(false);
    }
    if !items.iter().all(|i| matches!(i, Value::Map(_))) {
        return Err(err(
            key,
            "Sweep entry mixes dicts and scalars. Group entries must all be dicts; independent axes must all be scalars.",
        ));
    }
    Ok(true)
}

fn expand_group_entry(entry: &Map) -> Vec<Map> {
    let mut scalars = Map::new();
    let mut grid: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in entry {
        match v {
            Value::Seq(items)
                if !items.is_empty() && !matches!(items[0], Value::Seq(_) | Value::Map(_)) =>
            {
                grid.push((k.clone(), items.clone()))
            }
            _ => {
                scalars.insert(k.clone(), v.clone());
            }
        }
    }
    if grid.is_empty() {
        return vec![entry.clone()];
    }
    let lists: Vec<Vec<Value>> = grid.iter().map(|(_, v)| v.clone()).collect();
    product(&lists)
        .into_iter()
        .map(|combo| {
            let mut variant = scalars.clone();
            for ((k, _), v) in grid.iter().zip(combo) {
                variant.insert(k.clone(), v);
            }
            variant
        })
        .collect()
}

/// Cartesian product, last list varying fastest.
pub fn product<T: Clone>(lists: &[Vec<T>]) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = vec![Vec::new()];
    for list in lists {
        let mut next = Vec::with_capacity(out.len() * list.len());
        for prefix in &out {
            for item in list {
                let mut p = prefix.clone();
                p.push(item.clone());
                next.push(p);
            }
        }
        out = next;
    }
    out
}

/// Python `'%.10g' % v` parsed back.
pub fn round_sig10(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    format!("{:.9e}", v).parse().unwrap_or(v)
}

fn number(idiom: &str, name: &str, v: Option<&Value>) -> Result<Value, String> {
    match v {
        Some(Value::Int(i)) => Ok(Value::Int(*i)),
        Some(Value::Float(f)) if f.is_finite() => Ok(Value::Float(*f)),
        other => Err(format!(
            "{idiom} range shorthand: '{name}' must be a finite number, got {}",
            other
                .map(crate::study::py::repr)
                .unwrap_or_else(|| "None".into())
        )),
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn bounds(idiom: &str, m: &Map) -> Result<(Value, Value), String> {
    let lo = number(idiom, "min", m.get("min"))?;
    let hi = number(idiom, "max", m.get("max"))?;
    if f(&lo) > f(&hi) {
        return Err(format!(
            "{idiom} range shorthand: min ({}) must not exceed max ({})",
            crate::study::py::repr(&lo),
            crate::study::py::repr(&hi)
        ));
    }
    Ok((lo, hi))
}

/// Most values a range shorthand may expand to: a longer axis could never plan
/// ([`crate::study::MAX_PLANNED_RUNS`]), and building it would take the memory first.
pub const MAX_RANGE_VALUES: i64 = crate::study::MAX_PLANNED_RUNS as i64;

fn num(idiom: &str, v: Option<&Value>) -> Result<i64, String> {
    match v {
        Some(Value::Int(n)) if *n > MAX_RANGE_VALUES => Err(format!(
            "{idiom} range shorthand: 'num' is {n}, more than the limit of {MAX_RANGE_VALUES} values"
        )),
        Some(Value::Int(n)) if *n >= 2 => Ok(*n),
        other => Err(format!(
            "{idiom} range shorthand: 'num' must be an integer >= 2, got {}",
            other
                .map(crate::study::py::repr)
                .unwrap_or_else(|| "None".into())
        )),
    }
}

/// Drops repeated values, keeping the first, with Python's `==`: numbers by value
/// through a hash of it (a range can hold a million), anything else by comparison.
fn dedupe(values: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen_numbers = std::collections::HashSet::new();
    for v in values {
        let new = match crate::study::py::num(&v) {
            // `0.0 == -0.0`; a range's bounds are finite, so there is no NaN.
            Some(x) => seen_numbers.insert(if x == 0.0 { 0 } else { x.to_bits() }),
            None => !out.iter().any(|o| crate::study::py::py_eq(o, &v)),
        };
        if new {
            out.push(v);
        }
    }
    out
}

const IDIOM_SUMMARY: &str = "valid range shorthands are {min: a, max: b, num: n} (evenly spaced), {log: {min: a, max: b, num: n}} (log-spaced) and {pow2: {min: a, max: b}} (powers of two)";

fn inner<'a>(idiom: &str, v: &'a Value, keys: &[&str]) -> Result<&'a Map, String> {
    match v {
        Value::Map(m) if m.len() == keys.len() && keys.iter().all(|k| m.contains_key(*k)) => Ok(m),
        other => Err(format!(
            "{idiom} range shorthand requires a nested mapping with exactly the keys {{{}}}, got {}; {IDIOM_SUMMARY}",
            keys.join(", "),
            crate::study::py::repr(other)
        )),
    }
}

/// Expands a range shorthand mapping (FORMAT.md 7.3).
pub fn expand_range(m: &Map) -> Result<Vec<Value>, String> {
    let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
    keys.sort();
    if keys == ["max", "min", "num"] {
        let (lo, hi) = bounds("min/max/num", m)?;
        let n = num("min/max/num", m.get("num"))?;
        // Python's ints do not overflow; i128 holds every difference of two i64s, and
        // each value lies between min and max, so it fits an i64 again.
        if let (&Value::Int(a), &Value::Int(b)) = (&lo, &hi) {
            let (a, b, n) = (i128::from(a), i128::from(b), i128::from(n));
            if (b - a) % (n - 1) == 0 {
                let step = (b - a) / (n - 1);
                return Ok(dedupe(
                    (0..n).map(|i| Value::Int((a + step * i) as i64)).collect(),
                ));
            }
        }
        let mut out = vec![Value::Float(f(&lo))];
        for i in 1..n - 1 {
            let span = match (&lo, &hi) {
                (&Value::Int(a), &Value::Int(b)) => {
                    ((i128::from(b) - i128::from(a)) * i128::from(i)) as f64 / (n - 1) as f64
                }
                _ => (f(&hi) - f(&lo)) * i as f64 / (n - 1) as f64,
            };
            out.push(Value::Float(round_sig10(f(&lo) + span)));
        }
        out.push(Value::Float(f(&hi)));
        return Ok(dedupe(out));
    }
    if keys == ["log"] {
        let im = inner("log", &m["log"], &["max", "min", "num"])?;
        let (lo, hi) = bounds("log", im)?;
        if f(&lo) <= 0.0 {
            return Err(format!(
                "log range shorthand requires min > 0, got min={}",
                crate::study::py::repr(&lo)
            ));
        }
        let n = num("log", im.get("num"))?;
        let ratio = f(&hi) / f(&lo);
        let mut out = vec![f(&lo)];
        for i in 1..n - 1 {
            out.push(round_sig10(f(&lo) * ratio.powf(i as f64 / (n - 1) as f64)));
        }
        out.push(f(&hi));
        let ints = matches!((&lo, &hi), (Value::Int(_), Value::Int(_)))
            && out.iter().all(|v| v.fract() == 0.0);
        return Ok(dedupe(
            out.into_iter()
                .map(|v| {
                    if ints {
                        Value::Int(v as i64)
                    } else {
                        Value::Float(v)
                    }
                })
                .collect(),
        ));
    }
    if keys == ["pow2"] {
        let im = inner("pow2", &m["pow2"], &["max", "min"])?;
        let (lo, hi) = bounds("pow2", im)?;
        let (l, h) = (f(&lo), f(&hi));
        if l <= 0.0 {
            return Err(format!(
                "pow2 range shorthand requires min > 0, got min={}",
                crate::study::py::repr(&lo)
            ));
        }
        let k_lo = l.log2().floor() as i64 - 1;
        let k_hi = h.log2().ceil() as i64 + 1;
        let mut out: Vec<Value> = Vec::new();
        for k in k_lo..=k_hi {
            let p = if k >= 0 {
                Value::Int(1i64 << k.min(62))
            } else {
                Value::Float(2f64.powi(k as i32))
            };
            let pv = f(&p);
            if l <= pv && pv <= h {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(format!(
                "pow2 range shorthand: no power of two lies within [{}, {}]",
                crate::study::py::repr(&lo),
                crate::study::py::repr(&hi)
            ));
        }
        if out.iter().all(|p| matches!(p, Value::Int(_))) {
            return Ok(out);
        }
        return Ok(out.iter().map(|p| Value::Float(f(p))).collect());
    }
    let mut shown: Vec<String> = m.keys().cloned().collect();
    shown.sort();
    Err(format!(
        "mapping with keys [{}] is not a recognised range shorthand; {IDIOM_SUMMARY}. Literal mapping values cannot be swept as an axis - set them in the base config, or sweep them via a group entry (list of dicts).",
        shown.iter().map(|s| crate::study::py::repr_str(s)).collect::<Vec<_>>().join(", ")
    ))
}

struct Applying<'a> {
    engine: &'a str,
    section_fresh: bool,
}

/// `deep_merge(base, overlay)` in place, consuming the overlay.
fn deep_merge_into(base: &mut Map, overlay: Map) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(Value::Map(b)), Value::Map(o)) => deep_merge_into(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `*m = deep_merge(m, unflatten(path, value))` in place, without cloning `m`.
fn merge_path(m: &mut Map, path: &str, value: &Value) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    match rest {
        None => match (m.get_mut(head), value) {
            (Some(Value::Map(b)), Value::Map(o)) => deep_merge_into(b, o.clone()),
            _ => {
                m.insert(head.to_string(), value.clone());
            }
        },
        Some(rest) => {
            if !matches!(m.get(head), Some(Value::Map(_))) {
                m.insert(head.to_string(), Value::Map(Map::new()));
            }
            if let Some(Value::Map(sub)) = m.get_mut(head) {
                merge_path(sub, rest, value);
            }
        }
    }
}

fn route(cfg: &mut Map, key: &str, value: &Value, st: &mut Applying) -> Result<(), SweepError> {
    if let Some((prefix, rest)) = key.split_once('.') {
        if ENGINES.contains(&prefix) {
            match cfg.get_mut(prefix) {
                None => {
                    let mut section = Map::new();
                    merge_path(&mut section, rest, value);
                    cfg.insert(prefix.to_string(), Value::Map(section));
                }
                Some(Value::Map(section)) => merge_path(section, rest, value),
                Some(_) => {
                    return Err(err(
                        key,
                        format!("the fixed '{prefix}:' section is not a mapping, so '{key}' cannot be set inside it (write '{prefix}: {{}}' or remove it)"),
                    ))
                }
            }
            if prefix == st.engine {
                st.section_fresh = true;
            }
        } else {
            merge_path(cfg, key, value);
            st.section_fresh = true;
        }
    } else {
        cfg.insert(key.to_string(), value.clone());
        if key == st.engine {
            st.section_fresh = true;
        }
    }
    Ok(())
}

/// A sweep read into its axes, groups and engine list (7.3 steps 1-4).
struct SweepDims {
    universal_dims: Vec<(String, Vec<Value>)>,
    scoped_dims: Vec<(String, String, Vec<Value>)>,
    groups: Vec<(String, Vec<Map>)>,
    engines: Vec<Value>,
}

impl SweepDims {
    /// The number of configs engine `e` yields: the product of the sizes of the
    /// groups and axes that apply to it (saturating).
    fn count_for(&self, e: &str) -> usize {
        let groups = self
            .groups
            .iter()
            .filter(|(g, _)| engine_scope(g).is_none() || engine_scope(g) == Some(e))
            .map(|(_, v)| v.len());
        let axes = self.universal_dims.iter().map(|(_, v)| v.len()).chain(
            self.scoped_dims
                .iter()
                .filter(|(se, _, _)| se == e)
                .map(|(_, _, v)| v.len()),
        );
        groups.chain(axes).fold(1usize, usize::saturating_mul)
    }
}

fn sweep_dims(sweep: &Map, fixed: &Map) -> Result<SweepDims, SweepError> {
    let mut universal_dims: Vec<(String, Vec<Value>)> = Vec::new();
    let mut scoped_dims: Vec<(String, String, Vec<Value>)> = Vec::new();
    let mut groups: Vec<(String, Vec<Map>)> = Vec::new();
    for (key, values) in sweep {
        if is_group(key, values)? {
            let Value::Seq(items) = values else {
                unreachable!()
            };
            let mut variants = Vec::new();
            for item in items {
                if let Value::Map(m) = item {
                    variants.extend(expand_group_entry(m));
                }
            }
            groups.push((key.clone(), variants));
            continue;
        }
        let list = match values {
            Value::Map(m) => {
                expand_range(m).map_err(|e| err(key, format!("sweep axis '{key}': {e}")))?
            }
            Value::Seq(items) => items.clone(),
            other => vec![other.clone()],
        };
        if list.is_empty() {
            return Err(SweepError {
                key: key.clone(),
                message: format!("sweep axis '{key}' has no values (an empty list would silently produce no configs; give at least one value or remove the key)"),
                empty_axis: true,
            });
        }
        match engine_scope(key) {
            Some(e) => scoped_dims.push((e.to_string(), key.clone(), list)),
            None => universal_dims.push((key.clone(), list)),
        }
    }
    let mut collisions: Vec<&str> = groups
        .iter()
        .map(|(g, _)| g.as_str())
        .filter(|g| {
            universal_dims.iter().any(|(k, _)| k == g) || scoped_dims.iter().any(|(_, k, _)| k == g)
        })
        .collect();
    if !collisions.is_empty() {
        collisions.sort();
        return Err(err(
            collisions[0],
            format!(
                "Sweep group name(s) collide with independent axis key(s): {}. Use abstract names for groups (e.g. 'transformers.compilation' not 'transformers.torch_compile').",
                collisions.join(", ")
            ),
        ));
    }
    let fixed_engine = fixed
        .get("engine")
        .cloned()
        .unwrap_or(Value::Str("transformers".into()));
    let has_scoped =
        !scoped_dims.is_empty() || groups.iter().any(|(g, _)| engine_scope(g).is_some());
    let engines: Vec<Value> = if let Value::Seq(list) = &fixed_engine {
        list.clone()
    } else if has_scoped {
        let mut set: Vec<String> = scoped_dims.iter().map(|(e, _, _)| e.clone()).collect();
        set.extend(
            groups
                .iter()
                .filter_map(|(g, _)| engine_scope(g).map(str::to_string)),
        );
        if fixed.contains_key("engine") {
            set.push(crate::study::py::to_str(&fixed_engine));
        }
        set.sort();
        set.dedup();
        set.into_iter().map(Value::Str).collect()
    } else {
        vec![fixed_engine.clone()]
    };
    Ok(SweepDims {
        universal_dims,
        scoped_dims,
        groups,
        engines,
    })
}

/// Whether an empty sweep yields its one synthesized config (7.3, "Empty sweep").
fn synthesizes_one(fixed: &Map, synthesize: bool) -> bool {
    synthesize
        && fixed
            .get("task")
            .and_then(|t| t.as_map())
            .and_then(|t| t.get("model"))
            .is_some_and(crate::study::py::truthy)
}

/// How many raw configs [`expand_sweep`] would produce, without producing them
/// (saturating at `usize::MAX`). Errors are the ones `expand_sweep` reports for a
/// malformed sweep.
pub fn count_sweep(sweep: &Map, fixed: &Map, synthesize: bool) -> Result<usize, SweepError> {
    if sweep.is_empty() {
        return Ok(usize::from(synthesizes_one(fixed, synthesize)));
    }
    let dims = sweep_dims(sweep, fixed)?;
    let mut total: usize = 0;
    for engine_v in &dims.engines {
        total = total.saturating_add(dims.count_for(engine_v.as_str().unwrap_or("")));
    }
    Ok(total)
}

/// Advances a mixed-radix counter, last digit fastest; false when it wrapped.
fn advance(idx: &mut [usize], radix: &[usize]) -> bool {
    for i in (0..idx.len()).rev() {
        idx[i] += 1;
        if idx[i] < radix[i] {
            return true;
        }
        idx[i] = 0;
    }
    false
}

/// Which axis list a cursor reads: universal (index into `universal_dims`) or
/// engine-scoped (index into `scoped_dims`).
#[derive(Clone, Copy)]
enum AxisRef {
    Universal(usize),
    Scoped(usize),
}

/// The position inside one engine's product of groups and axes.
struct EngineCursor {
    engine: String,
    base: Map,
    groups: Vec<usize>,
    axes: Vec<AxisRef>,
    group_radix: Vec<usize>,
    axis_radix: Vec<usize>,
    gi: Vec<usize>,
    ai: Vec<usize>,
    /// No group or axis applies: the engine yields `base` once.
    plain: bool,
    exhausted: bool,
}

/// The sweep's raw configs, one at a time, in llem's order (7.3). Each config is
/// built when asked for, so a consumer that validates and drops them (as [`plan`]
/// does) never holds the whole grid in memory.
///
/// [`plan`]: crate::study::plan
pub struct SweepExpansion {
    dims: SweepDims,
    fixed: Map,
    next_engine: usize,
    cursor: Option<EngineCursor>,
    single: Option<RawConfig>,
    failed: bool,
}

impl SweepExpansion {
    /// Reads the sweep (range shorthands, groups, engine list); an error here is a
    /// malformed sweep.
    pub fn new(sweep: &Map, fixed: &Map, synthesize: bool) -> Result<Self, SweepError> {
        let empty = SweepDims {
            universal_dims: Vec::new(),
            scoped_dims: Vec::new(),
            groups: Vec::new(),
            engines: Vec::new(),
        };
        if sweep.is_empty() {
            let single = synthesizes_one(fixed, synthesize).then(|| {
                let engine = fixed
                    .get("engine")
                    .and_then(Value::as_str)
                    .unwrap_or("transformers")
                    .to_string();
                RawConfig {
                    map: strip_other_sections(fixed, &engine),
                    shared_section: shared_of(fixed, &engine, false),
                }
            });
            return Ok(SweepExpansion {
                dims: empty,
                fixed: Map::new(),
                next_engine: 0,
                cursor: None,
                single,
                failed: false,
            });
        }
        Ok(SweepExpansion {
            dims: sweep_dims(sweep, fixed)?,
            fixed: fixed.clone(),
            next_engine: 0,
            cursor: None,
            single: None,
            failed: false,
        })
    }

    fn open_engine(&mut self, engine_v: &Value) -> EngineCursor {
        let e = engine_v.as_str().unwrap_or("").to_string();
        let groups: Vec<usize> = (0..self.dims.groups.len())
            .filter(|&i| engine_scope(&self.dims.groups[i].0).is_none())
            .chain(
                (0..self.dims.groups.len())
                    .filter(|&i| engine_scope(&self.dims.groups[i].0) == Some(e.as_str())),
            )
            .collect();
        let axes: Vec<AxisRef> = (0..self.dims.universal_dims.len())
            .map(AxisRef::Universal)
            .chain(
                (0..self.dims.scoped_dims.len())
                    .filter(|&i| self.dims.scoped_dims[i].0 == e)
                    .map(AxisRef::Scoped),
            )
            .collect();
        let group_radix: Vec<usize> = groups
            .iter()
            .map(|&i| self.dims.groups[i].1.len())
            .collect();
        let axis_radix: Vec<usize> = axes.iter().map(|a| self.axis(*a).1.len()).collect();
        let mut base = strip_other_sections(&self.fixed, &e);
        base.insert("engine".into(), engine_v.clone());
        EngineCursor {
            engine: e,
            base,
            gi: vec![0; groups.len()],
            ai: vec![0; axes.len()],
            plain: groups.is_empty() && axes.is_empty(),
            exhausted: group_radix.contains(&0) || axis_radix.contains(&0),
            groups,
            axes,
            group_radix,
            axis_radix,
        }
    }

    fn axis(&self, a: AxisRef) -> (&str, &Vec<Value>) {
        match a {
            AxisRef::Universal(i) => {
                let (k, v) = &self.dims.universal_dims[i];
                (k, v)
            }
            AxisRef::Scoped(i) => {
                let (_, k, v) = &self.dims.scoped_dims[i];
                (k, v)
            }
        }
    }

    /// Builds the config at the cursor and moves the cursor on.
    fn build(&self, c: &mut EngineCursor) -> Result<RawConfig, SweepError> {
        let mut cfg = c.base.clone();
        if c.plain {
            c.exhausted = true;
            return Ok(RawConfig {
                map: cfg,
                shared_section: shared_of(&self.fixed, &c.engine, false),
            });
        }
        let mut st = Applying {
            engine: &c.engine,
            section_fresh: false,
        };
        for (a, &i) in c.axes.iter().zip(&c.ai) {
            let (k, values) = self.axis(*a);
            route(&mut cfg, k, &values[i], &mut st)?;
        }
        for (&g, &i) in c.groups.iter().zip(&c.gi) {
            for (k, v) in &self.dims.groups[g].1[i] {
                route(&mut cfg, k, v, &mut st)?;
            }
        }
        let shared = shared_of(&self.fixed, &c.engine, st.section_fresh);
        // Group combinations outside, axis combinations inside, last varying fastest
        // (the order of llem's nested itertools.product loops).
        if !advance(&mut c.ai, &c.axis_radix) && !advance(&mut c.gi, &c.group_radix) {
            c.exhausted = true;
        }
        Ok(RawConfig {
            map: cfg,
            shared_section: shared,
        })
    }
}

fn shared_of(fixed: &Map, e: &str, fresh: bool) -> Option<String> {
    (!fresh && matches!(fixed.get(e), Some(Value::Map(_)))).then(|| e.to_string())
}

impl Iterator for SweepExpansion {
    type Item = Result<RawConfig, SweepError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(one) = self.single.take() {
            return Some(Ok(one));
        }
        loop {
            if let Some(mut c) = self.cursor.take() {
                if !c.exhausted {
                    let item = self.build(&mut c);
                    self.failed = item.is_err();
                    self.cursor = Some(c);
                    return Some(item);
                }
            }
            let engine_v = self.dims.engines.get(self.next_engine)?.clone();
            self.next_engine += 1;
            self.cursor = Some(self.open_engine(&engine_v));
        }
    }
}

/// Expands the sweep over `merged_fixed` (7.3) into a vector.
pub fn expand_sweep(
    sweep: &Map,
    fixed: &Map,
    synthesize: bool,
) -> Result<Vec<RawConfig>, SweepError> {
    SweepExpansion::new(sweep, fixed, synthesize)?.collect()
}

/// The `experiments:` entries merged over the fixed fields (7.4).
pub fn expand_experiments(entries: &[Value], fixed: &Map) -> Vec<RawConfig> {
    let mut out = Vec::new();
    for entry in entries {
        let empty = Map::new();
        let entry_map = entry.as_map().unwrap_or(&empty);
        let mut merged = deep_merge(fixed, entry_map);
        let engine = merged
            .get("engine")
            .cloned()
            .or_else(|| fixed.get("engine").cloned())
            .unwrap_or(Value::Str("transformers".into()));
        for key in ENGINES {
            let same = matches!(&engine, Value::Str(s) if s == key);
            if !same && merged.contains_key(*key) && !entry_map.contains_key(*key) {
                merged.shift_remove(*key);
            }
        }
        out.push(RawConfig {
            map: merged,
            shared_section: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyjson::parse;

    fn range(text: &str) -> Vec<Value> {
        expand_range(parse(text).unwrap().as_map().unwrap()).unwrap()
    }

    // Found with inputs from the fuzzing dictionary (fuzz/): `max - min` overflowed
    // i64 and panicked, and a `num` of 10^8 took the memory and a quadratic dedupe.
    #[test]
    fn ranges_at_the_edges_of_i64_and_num() {
        let it = |v: &[i64]| v.iter().map(|x| Value::Int(*x)).collect::<Vec<_>>();
        assert_eq!(
            range(r#"{"min": -9223372036854775808, "max": 9223372036854775807, "num": 2}"#),
            it(&[i64::MIN, i64::MAX])
        );
        assert_eq!(
            range(r#"{"min": -9223372036854775807, "max": 9223372036854775807, "num": 3}"#),
            it(&[-i64::MAX, 0, i64::MAX])
        );
        let v = range(r#"{"min": -9223372036854775808, "max": 9223372036854775807, "num": 3}"#);
        assert_eq!(v.len(), 3);
        let e = expand_range(
            parse(r#"{"min": 0, "max": 1, "num": 100000000}"#)
                .unwrap()
                .as_map()
                .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "min/max/num range shorthand: 'num' is 100000000, more than the limit of 1000000 values"
        );
        // Long ranges dedupe in linear time.
        assert_eq!(
            range(r#"{"min": 0, "max": 1, "num": 300000}"#).len(),
            300_000
        );
        assert_eq!(range(r#"{"min": 5, "max": 5, "num": 1000000}"#), it(&[5]));
        assert_eq!(
            dedupe(vec![
                Value::Float(-0.0),
                Value::Int(0),
                Value::Bool(true),
                Value::Float(1.0)
            ]),
            vec![Value::Float(-0.0), Value::Bool(true)]
        );
    }

    #[test]
    fn range_shorthands_match_format_examples() {
        let fl = |v: &[f64]| v.iter().map(|x| Value::Float(*x)).collect::<Vec<_>>();
        let it = |v: &[i64]| v.iter().map(|x| Value::Int(*x)).collect::<Vec<_>>();
        assert_eq!(
            range(r#"{"min": 0.5, "max": 0.9, "num": 3}"#),
            fl(&[0.5, 0.7, 0.9])
        );
        assert_eq!(
            range(r#"{"min": 0.1, "max": 0.3, "num": 5}"#),
            fl(&[0.1, 0.15, 0.2, 0.25, 0.3])
        );
        assert_eq!(
            range(r#"{"log": {"min": 1, "max": 16, "num": 3}}"#),
            it(&[1, 4, 16])
        );
        assert_eq!(range(r#"{"pow2": {"min": 2, "max": 8}}"#), it(&[2, 4, 8]));
        assert_eq!(
            range(r#"{"min": 1, "max": 10, "num": 4}"#),
            it(&[1, 4, 7, 10])
        );
        assert_eq!(
            range(r#"{"pow2": {"min": 0.25, "max": 1}}"#),
            fl(&[0.25, 0.5, 1.0])
        );
        assert!(expand_range(parse(r#"{"min": 1}"#).unwrap().as_map().unwrap()).is_err());
    }

    #[test]
    fn group_entry_mini_grid() {
        let m = parse(r#"{"a": 1, "b": [1, 2], "c": ["x", "y"]}"#).unwrap();
        let v = expand_group_entry(m.as_map().unwrap());
        assert_eq!(v.len(), 4);
        assert_eq!(v[1].keys().collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert_eq!(v[1]["c"], Value::Str("y".into()));
    }
}
