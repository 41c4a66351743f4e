//! Embeds the Python harness (docker/harness: its .py files, built-in .jsonl
//! datasets and .json engine signatures, tests excluded) into the worker binary,
//! so a carried `lem-worker` needs no checkout: it writes the files out at start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read harness dir {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if name == "tests" || name == "__pycache__" {
                continue;
            }
            collect(&p, root, out);
        } else if name.ends_with(".py") || name.ends_with(".jsonl") || name.ends_with(".json") {
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest
        .join("../docker/harness")
        .canonicalize()
        .expect("docker/harness exists");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    let mut code = String::from("/// The harness files as (relative path, contents).\npub const HARNESS_FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
        writeln!(
            code,
            "    ({:?}, include_str!({:?})),",
            f.to_string_lossy(),
            root.join(f).to_string_lossy()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("harness_files.rs");
    std::fs::write(out, code).unwrap();
}
