//! One GPU, one measuring worker: a worker holds an exclusive lock per real GPU it
//! measures, named by the GPU's UUID, for as long as it runs.
//!
//! Two workers (or two slots) measuring the same GPU at once would each count the
//! other's power as their own run's energy: a wrong joule, silently. The lock is an
//! `flock` on a file in a directory every process of the host shares (`/tmp`, or
//! `LEM_GPU_LOCK_DIR`), so it is released by the kernel when the process dies, even
//! by SIGKILL, and a restarted worker takes it again at once. Simulated GPUs belong to
//! their process and are not locked.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The directory of the lock files: `LEM_GPU_LOCK_DIR`, else the system's temporary
/// directory.
pub fn lock_dir() -> PathBuf {
    std::env::var_os("LEM_GPU_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// The locks held; dropping it releases them.
#[derive(Debug)]
pub struct GpuClaim {
    _locks: Vec<File>,
}

/// Takes the lock of every GPU of `gpus` (index, UUID) in `dir`, or fails naming the
/// first GPU another process holds.
pub fn claim(dir: &Path, gpus: &[(u32, String)]) -> anyhow::Result<GpuClaim> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the GPU lock directory {}", dir.display()))?;
    let mut locks = Vec::new();
    for (index, uuid) in gpus {
        let name: String = uuid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("lem-fleet-gpu-{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the GPU lock {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "GPU {index} ({uuid}) is already measured by another lem-worker on this host (lock {}): two workers on one GPU would each count the other's power as their own; give each worker its own GPUs (CUDA_VISIBLE_DEVICES, --slots, --gpu-groups) or stop the other one",
                    path.display()
                );
            }
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        locks.push(file);
    }
    Ok(GpuClaim { _locks: locks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_claimed_once_until_its_claim_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![(0, "GPU-aaaa".to_string()), (1, "GPU-bbbb".to_string())];
        let first = claim(dir.path(), &a).unwrap();
        // Another claim of GPU 1 (a second descriptor, as another process has) fails
        // and names it; a different GPU is free.
        let e = claim(dir.path(), &[(1, "GPU-bbbb".into())]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("GPU 1 (GPU-bbbb) is already measured by another lem-worker"),
            "{msg}"
        );
        claim(dir.path(), &[(2, "GPU-cccc".into())]).unwrap();
        drop(first);
        claim(dir.path(), &[(1, "GPU-bbbb".into())]).unwrap();
    }

    #[test]
    fn odd_characters_in_a_uuid_stay_out_of_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let _c = claim(dir.path(), &[(0, "MIG-x/../y z".into())]).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["lem-fleet-gpu-MIG-x____y_z.lock"]);
    }
}
