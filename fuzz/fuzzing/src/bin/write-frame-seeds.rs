//! Writes the `rpc_frame` seed corpus: real frames from the production encoder, one
//! file per message kind, into `fuzz/corpus/rpc_frame/` (or the directory given).
//! Rerun it when a wire type changes; the bounded test says when to.

use std::path::PathBuf;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            lem_fuzzing::seeds::repo_root().join(lem_fuzzing::seeds::FRAME_SEED_DIR)
        });
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("write-frame-seeds: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    for seed in lem_fuzzing::seeds::sample_frames() {
        let path = dir.join(&seed.name);
        if let Err(e) = std::fs::write(&path, &seed.bytes) {
            eprintln!("write-frame-seeds: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("{} ({} bytes)", path.display(), seed.bytes.len());
    }
}
