//! A seeded mutator: byte-level mutations (bit flips, insertions, deletions, splices,
//! truncations) plus ones that know the input's shape: YAML tokens and structures
//! (anchors, aliases, tags, merges, deep nesting, huge numbers, tabs, BOMs) for
//! studies, and length prefixes and JSON payloads for frames.
//!
//! Deterministic: the same seed and inputs give the same mutants, so a failure is
//! reproduced by its seed and index alone.

/// SplitMix64: small, fast and good enough to pick mutations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The shape of the inputs a [`Mutator`] works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Study files: YAML (or JSON) text.
    Study,
    /// Bytes on the wire: length-prefixed JSON frames.
    Frames,
}

/// Mutants stop growing past this many bytes (except a few deliberately long ones),
/// and only mutants up to this size are kept to mutate again.
pub const MAX_MUTANT_BYTES: usize = 16 << 10;

/// Produces mutants of corpus entries.
#[derive(Clone, Debug)]
pub struct Mutator {
    rng: Rng,
    shape: Shape,
}

impl Mutator {
    pub fn new(shape: Shape, seed: u64) -> Mutator {
        Mutator {
            rng: Rng::new(seed),
            shape,
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A mutant of `input`: one to four stacked mutations; `pool` supplies splices.
    pub fn mutate(&mut self, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        let mut out = input.to_vec();
        let n = 1 + self.rng.below(4);
        for _ in 0..n {
            if out.len() > MAX_MUTANT_BYTES {
                break;
            }
            match self.shape {
                Shape::Study => self.study_once(&mut out, pool),
                Shape::Frames => self.frames_once(&mut out, pool),
            }
        }
        out
    }

    /// Generates a pathological input of the shape from nothing: deep nesting, an
    /// alias bomb, a huge length prefix, a frame of megabytes.
    pub fn generate(&mut self) -> Vec<u8> {
        match self.shape {
            Shape::Study => generate_study(&mut self.rng),
            Shape::Frames => generate_frames(&mut self.rng),
        }
    }

    fn study_once(&mut self, out: &mut Vec<u8>, pool: &[Vec<u8>]) {
        match self.rng.below(14) {
            0..=4 => self.bytes_once(out, pool),
            5 | 6 => {
                let t = self.rng.pick(YAML_TOKENS).as_bytes();
                insert_at(out, self.rng.below(out.len() + 1), t);
            }
            7 => {
                // A token where a value or key starts: after ": ", "- " or a newline.
                let t = self.rng.pick(YAML_TOKENS).as_bytes();
                let at = token_boundary(out, &mut self.rng);
                insert_at(out, at, t);
            }
            8 => replace_number(out, &mut self.rng),
            9 => anchor_and_alias(out, &mut self.rng),
            10 => reindent_line(out, &mut self.rng),
            11 => {
                // A tab or a BOM at the start of a line, or a BOM up front.
                let at = if self.rng.one_in(3) {
                    0
                } else {
                    line_start(out, &mut self.rng)
                };
                let t: &[u8] = if self.rng.one_in(2) {
                    b"\t"
                } else {
                    "\u{feff}".as_bytes()
                };
                insert_at(out, at, t);
            }
            12 => {
                // Wrap the value after a key in nesting.
                let max_depth = if self.rng.one_in(8) { 400 } else { 8 };
                let depth = 1 + self.rng.below(max_depth);
                let at = token_boundary(out, &mut self.rng);
                let (open, close) = if self.rng.one_in(2) {
                    ("[", "]")
                } else {
                    ("{k: ", "}")
                };
                let mut t = open.repeat(depth).into_bytes();
                t.extend_from_slice(b"1");
                t.extend(close.repeat(depth).bytes());
                insert_at(out, at, &t);
            }
            _ => {
                let g = generate_study(&mut self.rng);
                splice(out, &g, &mut self.rng);
            }
        }
    }

    fn frames_once(&mut self, out: &mut Vec<u8>, pool: &[Vec<u8>]) {
        match self.rng.below(10) {
            0..=2 => self.bytes_once(out, pool),
            3..=5 => {
                // Mutate one frame's JSON, then write its length again, so the JSON
                // decoder (not only the framing) sees the change.
                let mut frames = split_frames(out);
                if frames.is_empty() {
                    frames.push(b"{}".to_vec());
                }
                let i = self.rng.below(frames.len());
                let payload = &mut frames[i];
                match self.rng.below(3) {
                    0 => {
                        let t = self.rng.pick(JSON_TOKENS).as_bytes();
                        insert_at(payload, self.rng.below(payload.len() + 1), t);
                    }
                    1 => replace_number(payload, &mut self.rng),
                    _ => self.bytes_once(payload, pool),
                }
                *out = join_frames(&frames);
            }
            6 => {
                // A bad length prefix: zero, one off, the limit and past it, all ones.
                let frames = split_frames(out);
                let lens = [
                    0u32,
                    1,
                    (frames.first().map_or(0, Vec::len) as u32).wrapping_add(1),
                    (frames.first().map_or(0, Vec::len) as u32).wrapping_sub(1),
                    16 << 20,
                    (16 << 20) + 1,
                    u32::MAX,
                    self.rng.next_u64() as u32,
                ];
                let len = *self.rng.pick(&lens);
                let at = if self.rng.one_in(2) {
                    0
                } else {
                    self.rng.below(out.len() + 1)
                };
                insert_at(out, at, &len.to_be_bytes());
            }
            7 => {
                // Frames from another input, before or after these.
                if !pool.is_empty() {
                    let other = self.rng.pick(pool).clone();
                    if self.rng.one_in(2) {
                        out.extend_from_slice(&other);
                    } else {
                        insert_at(out, 0, &other);
                    }
                }
            }
            8 => {
                // Drop or repeat a frame.
                let mut frames = split_frames(out);
                if !frames.is_empty() {
                    let i = self.rng.below(frames.len());
                    if self.rng.one_in(2) {
                        frames.remove(i);
                    } else {
                        let f = frames[i].clone();
                        frames.insert(i, f);
                    }
                    *out = join_frames(&frames);
                }
            }
            _ => {
                let g = generate_frames(&mut self.rng);
                out.extend_from_slice(&g);
            }
        }
    }

    fn bytes_once(&mut self, out: &mut Vec<u8>, pool: &[Vec<u8>]) {
        let len = out.len();
        match self.rng.below(9) {
            0 if len > 0 => {
                let i = self.rng.below(len);
                out[i] ^= 1 << self.rng.below(8);
            }
            1 if len > 0 => {
                let i = self.rng.below(len);
                out[i] = *self
                    .rng
                    .pick(&[0u8, 0x7f, 0x80, 0xff, b'\n', b' ', b'"', b'\\']);
            }
            2 => {
                let n = 1 + self.rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                insert_at(out, self.rng.below(len + 1), &bytes);
            }
            3 if len > 0 => {
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(64));
                out.drain(at..at + n);
            }
            4 if len > 0 => {
                // Duplicate a range in place.
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(256));
                let chunk = out[at..at + n].to_vec();
                insert_at(out, at, &chunk);
            }
            5 if len > 0 => out.truncate(self.rng.below(len)),
            6 if !pool.is_empty() => {
                let other = self.rng.pick(pool).clone();
                splice(out, &other, &mut self.rng);
            }
            7 if len > 1 => {
                // Swap two bytes.
                let (a, b) = (self.rng.below(len), self.rng.below(len));
                out.swap(a, b);
            }
            _ => {
                // Repeat a short chunk many times (long lines, long keys, long lists).
                let at = self.rng.below(len + 1);
                let n = 1 + self.rng.below(16.min(len - at.min(len)).max(1));
                let chunk = out
                    .get(at..at + n)
                    .map(<[u8]>::to_vec)
                    .unwrap_or(b"a".to_vec());
                let times = 2 + self.rng.below(200);
                insert_at(out, at, &chunk.repeat(times));
            }
        }
    }
}

/// Splits `bytes` into length-delimited frame payloads; what does not parse as a
/// frame ends the list (the remainder is dropped).
pub fn split_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() - 4 < len {
            break;
        }
        frames.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    frames
}

/// The payloads, each behind its 4-byte big-endian length.
pub fn join_frames(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// YAML fragments a study parser must survive: node properties, flow and block
/// indicators, directives, document markers, PyYAML's implicit types at their edges,
/// and the study keys that steer planning.
pub const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: *a\n",
    "<<: [*a, *b]\n",
    "<<: ",
    "!!str ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!null ",
    "!!map ",
    "!!seq ",
    "!!binary ",
    "!!timestamp ",
    "!!python/object:os.system ",
    "!local ",
    "! ",
    "!<tag:yaml.org,2002:str> ",
    "%YAML 1.1\n",
    "%TAG !e! tag:example.com,2000:\n",
    "---\n",
    "...\n",
    "--- ",
    "? ",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "|\n  ",
    ">-\n  ",
    "|+2\n",
    "'",
    "\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\x\"",
    "\"\\\u{e9}\"",
    "\"\\u+abc\"",
    "#",
    "\t",
    "\u{feff}",
    "\r\n",
    "\u{85}",
    "~",
    "null",
    "yes",
    "Off",
    "=",
    "0x",
    "0b",
    "0o17",
    "0x_",
    "-0b",
    "017",
    "99999999999999999999999999999999999999999999",
    "-170141183460469231731687303715884105728",
    "--170141183460469231731687303715884105728",
    "9223372036854775808",
    "-9223372036854775809",
    "1_000_000_000_000",
    "1:59:59",
    "1:60",
    "190:20:30.15",
    "1e309",
    "1.0e+309",
    "-1.0e-400",
    ".inf",
    "-.Inf",
    ".nan",
    "1.",
    ".5",
    "2024-01-01",
    "2024-01-01 10:00:00 +05",
    "2024-1-1t1:00:00.1234567Z",
    "2024-01-01 10:00:00 \u{e9}",
    "2024-01-01 10:00:00 -",
    "sweep:\n",
    "experiments:\n  - ",
    "study_execution:\n  n_cycles: ",
    "study_name: ",
    "n_cycles: 4000000000\n",
    "experiment_order: latin_square\n",
    "experiment_order: shuffle\n",
    "shuffle_seed: -1\n",
    "base: ",
    "version: ",
    "engine: ",
    "task.model: ",
    "task.max_output_tokens: ",
    "synthetic.engine_params.batch_size: ",
    "vllm.engine_params.",
    "transformers.",
    "engine: [transformers, vllm, tensorrt, synthetic]\n",
    "{min: 1, max: 8, num: 4}",
    "{min: -9223372036854775808, max: 9223372036854775807, num: 3}",
    "{min: 0, max: 1, num: 100000000}",
    "{min: 1.0e-300, max: 1.0e+300, num: 5}",
    "{log: {min: 1, max: 1.0e+300, num: 1000}}",
    "{log: {min: 0, max: 1, num: 2}}",
    "{pow2: {min: 1, max: 9223372036854775807}}",
    "{pow2: {min: 1.0e-300, max: 1.0e+300}}",
    "[1, 2, 4, 8, 16, 32]",
    "sampling_preset: ",
    "serving_mode: ",
];

/// JSON fragments a frame decoder must survive.
pub const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-0",
    "1e999",
    "-1e999",
    "1.7976931348623157e308",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211455",
    "-9223372036854775809",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\uZZZZ\"",
    "\u{feff}",
    "NaN",
    "\"Request\"",
    "\"Cancel\"",
    "\"context\"",
    "\"deadline\"",
    "{\"secs\":18446744073709551615,\"nanos\":999999999}",
    "{\"secs\":9223372036854775807,\"nanos\":0}",
    "{\"secs\":1,\"nanos\":4294967295}",
    "\"trace_context\"",
    "\"message\"",
    "\"Ok\"",
    "\"Err\"",
    "\"Submit\"",
    "\"Complete\"",
    "\"request_id\"",
];

fn insert_at(out: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let at = at.min(out.len());
    out.splice(at..at, bytes.iter().copied());
}

/// Replaces `out[a..b]` with a slice of `other`.
fn splice(out: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let a = rng.below(out.len() + 1);
    let b = a + rng.below(out.len() - a + 1);
    let c = rng.below(other.len() + 1);
    let d = c + rng.below(other.len() - c + 1);
    out.splice(a..b, other[c..d].iter().copied());
}

/// A byte offset just after a newline, `": "` or `"- "`, or anywhere when none.
fn token_boundary(out: &[u8], rng: &mut Rng) -> usize {
    let marks: Vec<usize> = out
        .windows(2)
        .enumerate()
        .filter(|(_, w)| matches!(w, [b':', b' '] | [b'-', b' ']) || w[0] == b'\n')
        .map(|(i, w)| if w[0] == b'\n' { i + 1 } else { i + 2 })
        .collect();
    if marks.is_empty() {
        rng.below(out.len() + 1)
    } else {
        *rng.pick(&marks)
    }
}

fn line_start(out: &[u8], rng: &mut Rng) -> usize {
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            out.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    *rng.pick(&starts)
}

/// Numbers at the edges of what the parsers and the schema hold.
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "4294967296",
    "4000000000",
    "2147483648",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999999999",
    "1e308",
    "1e309",
    "0.0000001",
    "-0.0",
    "077",
    "0x7fffffff",
    "1_0",
    "100000",
];

/// Replaces a run of digits with a number at an edge (huge, negative, float, octal).
fn replace_number(out: &mut Vec<u8>, rng: &mut Rng) {
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < out.len() {
            if out[i].is_ascii_digit() {
                let s = i;
                while i < out.len() && out[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((s, i));
            } else {
                i += 1;
            }
        }
        runs
    };
    if runs.is_empty() {
        return;
    }
    let (s, e) = *rng.pick(&runs);
    let n = rng.pick(EDGE_NUMBERS);
    out.splice(s..e, n.bytes());
}

/// Puts an anchor on one value and an alias to it (or a merge of it) elsewhere.
fn anchor_and_alias(out: &mut Vec<u8>, rng: &mut Rng) {
    let at = token_boundary(out, rng);
    insert_at(out, at, b"&x ");
    let later = at + 3 + rng.below(out.len() - (at + 3).min(out.len()) + 1);
    let t: &[u8] = if rng.one_in(3) { b"<<: *x\n" } else { b"*x" };
    insert_at(out, later, t);
}

/// Indents or dedents one line by a few spaces.
fn reindent_line(out: &mut Vec<u8>, rng: &mut Rng) {
    let at = line_start(out, rng);
    if rng.one_in(2) {
        let n = 1 + rng.below(4);
        insert_at(out, at, &b"    "[..n]);
    } else {
        let n = out[at..].iter().take_while(|b| **b == b' ').count().min(2);
        out.drain(at..at + n);
    }
}

fn generate_study(rng: &mut Rng) -> Vec<u8> {
    match rng.below(7) {
        0 => {
            // Deep flow nesting: yaml-rust2 caps flow depth, so this must be refused.
            let depth = 100 + rng.below(2_000);
            format!("task: {}1{}\n", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        1 => {
            // Deep block nesting: `- - - - x` nests one sequence per dash.
            let depth = 100 + rng.below(20_000);
            format!("sweep:\n  k: {}x\n", "- ".repeat(depth)).into_bytes()
        }
        2 => {
            // Deep block mappings, one level per line.
            let depth = 50 + rng.below(400);
            let mut s = String::from("task:\n");
            for i in 0..depth {
                s.push_str(&" ".repeat(i + 1));
                s.push_str("k:\n");
            }
            s.into_bytes()
        }
        3 => {
            // An alias bomb: each level repeats the previous one `width` times.
            let width = 2 + rng.below(9);
            let levels = 4 + rng.below(12);
            let mut s = String::from("a0: &a0 [x, x]\n");
            for l in 1..levels {
                let items = vec![format!("*a{}", l - 1); width].join(", ");
                s.push_str(&format!("a{l}: &a{l} [{items}]\n"));
            }
            s.push_str(&format!("task: {{model: *a{}}}\n", levels - 1));
            s.into_bytes()
        }
        4 => {
            // A merge bomb: each mapping merges the previous one twice over.
            let levels = 4 + rng.below(20);
            let mut s = String::from("m0: &m0 {a: 1, b: 2}\n");
            for l in 1..levels {
                s.push_str(&format!(
                    "m{l}: &m{l}\n  <<: [*m{p}, *m{p}]\n  k{l}: {{<<: *m{p}, x: *m{p}}}\n",
                    p = l - 1
                ));
            }
            s.into_bytes()
        }
        5 => {
            // A long dotted sweep key.
            let depth = 10 + rng.below(5_000);
            format!(
                "task: {{model: m}}\nsweep:\n  synthetic{}: [1, 2]\n",
                ".engine_params".repeat(depth)
            )
            .into_bytes()
        }
        _ => {
            // A long scalar, key or list.
            let n = 1_000 + rng.below(50_000);
            match rng.below(3) {
                0 => format!("study_name: {}\n", "x".repeat(n)).into_bytes(),
                1 => format!("{}: 1\n", "k".repeat(n)).into_bytes(),
                _ => format!(
                    "task: {{model: m}}\nsweep:\n  task.max_output_tokens: [{}1]\n",
                    "1, ".repeat(n / 3)
                )
                .into_bytes(),
            }
        }
    }
}

fn generate_frames(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            // A length prefix that promises far more than follows.
            let len = *rng.pick(&[16u32 << 20, (16 << 20) + 1, u32::MAX, 1 << 30]);
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(b"{\"Request\":");
            out
        }
        1 => {
            // A long frame: a JSON string of up to 256 KiB in a submit request.
            let n = 1_000 + rng.below(256 << 10);
            let payload = format!(
                "{{\"Request\":{{\"context\":{{\"deadline\":{{\"secs\":10,\"nanos\":0}},\"trace_context\":{{\"trace_id\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"span_id\":0,\"sampling_decision\":\"Unsampled\"}}}},\"id\":1,\"message\":{{\"Submit\":{{\"req\":{{\"path\":\"s.yaml\",\"text\":\"{}\",\"base\":null}}}}}}}}}}",
                "a".repeat(n)
            );
            join_frames(&[payload.into_bytes()])
        }
        2 => {
            // JSON nested past serde_json's recursion limit.
            let depth = 100 + rng.below(100_000);
            let payload = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            join_frames(&[payload.into_bytes()])
        }
        3 => {
            // Many empty frames.
            let n = 1 + rng.below(10_000);
            vec![0u8; 4 * n]
        }
        _ => {
            // A deadline at the edge of what an Instant can hold.
            let secs = *rng.pick(&[
                u64::MAX,
                i64::MAX as u64,
                i64::MAX as u64 / 2,
                u64::MAX / 1_000_000_000,
                1 << 40,
            ]);
            let payload = format!(
                "{{\"Request\":{{\"context\":{{\"deadline\":{{\"secs\":{secs},\"nanos\":999999999}},\"trace_context\":{{\"trace_id\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],\"span_id\":1,\"sampling_decision\":\"Sampled\"}}}},\"id\":7,\"message\":{{\"Campaigns\":{{}}}}}}}}"
            );
            join_frames(&[payload.into_bytes()])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_join_back() {
        let frames = vec![b"{}".to_vec(), Vec::new(), b"[1]".to_vec()];
        let bytes = join_frames(&frames);
        assert_eq!(split_frames(&bytes), frames);
        // A cut-off frame ends the list.
        assert_eq!(
            split_frames(&bytes[..bytes.len() - 1]),
            frames[..2].to_vec()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_mutants() {
        let pool = vec![b"task: {model: m}\nsweep:\n  a: [1, 2]\n".to_vec()];
        let run = |seed| {
            let mut m = Mutator::new(Shape::Study, seed);
            (0..50)
                .map(|_| m.mutate(&pool[0], &pool))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
