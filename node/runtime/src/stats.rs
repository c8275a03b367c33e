//! Reads a container's CPU and memory use and its OOM-kill counter from its cgroup (v1
//! controllers on hybrid hosts, the unified hierarchy on pure v2 hosts).

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::Usage;

/// Errors reading cgroup files.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A cgroup file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A cgroup file did not hold what the kernel documents.
    #[error("unexpected content in {path}")]
    Parse {
        /// The file.
        path: PathBuf,
    },
}

/// Where a container's cgroup files live under a cgroup mount root (`/sys/fs/cgroup`).
#[derive(Debug, Clone)]
pub struct CgroupFiles {
    root: PathBuf,
    path: String,
}

impl CgroupFiles {
    /// The cgroup at `cgroups_path` (as in the OCI spec) under `root`.
    #[must_use]
    pub fn new(root: &Path, cgroups_path: &str) -> Self {
        Self {
            root: root.to_owned(),
            path: cgroups_path.trim_start_matches('/').to_owned(),
        }
    }

    /// The v1 directory of `controller` (the first of its usual mount names that exists).
    fn v1_dir(&self, controllers: &[&str]) -> Option<PathBuf> {
        controllers
            .iter()
            .map(|c| self.root.join(c))
            .find(|d| d.is_dir())
            .map(|d| d.join(&self.path))
    }

    /// The directory in the unified hierarchy, when the root is a pure v2 mount.
    fn v2_dir(&self) -> Option<PathBuf> {
        self.root
            .join("cgroup.controllers")
            .is_file()
            .then(|| self.root.join(&self.path))
    }

    /// CPU and memory use now.
    ///
    /// # Errors
    /// If the cgroup files are missing or malformed.
    pub fn usage(&self) -> Result<Usage, StatsError> {
        let at = SystemTime::now();
        if let Some(v2) = self.v2_dir() {
            let cpu_usec = stat_field(&v2.join("cpu.stat"), "usage_usec")?;
            let usage = read_u64(&v2.join("memory.current"))?;
            let inactive = stat_field(&v2.join("memory.stat"), "inactive_file").unwrap_or(0);
            return Ok(Usage {
                cpu_usage_nanos: cpu_usec.saturating_mul(1000),
                memory_working_set_bytes: usage.saturating_sub(inactive),
                memory_usage_bytes: usage,
                at,
            });
        }
        let cpu = self
            .v1_dir(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"])
            .ok_or_else(|| missing(&self.root.join("cpuacct")))?;
        let memory = self
            .v1_dir(&["memory"])
            .ok_or_else(|| missing(&self.root.join("memory")))?;
        let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
        let stat = memory.join("memory.stat");
        let inactive = stat_field(&stat, "total_inactive_file")
            .or_else(|_| stat_field(&stat, "inactive_file"))
            .unwrap_or(0);
        Ok(Usage {
            cpu_usage_nanos: read_u64(&cpu.join("cpuacct.usage"))?,
            memory_working_set_bytes: usage.saturating_sub(inactive),
            memory_usage_bytes: usage,
            at,
        })
    }

    /// How often the OOM killer fired in this cgroup (0 when unknown).
    #[must_use]
    pub fn oom_kills(&self) -> u64 {
        let file = match self.v2_dir() {
            Some(v2) => v2.join("memory.events"),
            None => match self.v1_dir(&["memory"]) {
                Some(dir) => dir.join("memory.oom_control"),
                None => return 0,
            },
        };
        stat_field(&file, "oom_kill").unwrap_or(0)
    }
}

fn missing(path: &Path) -> StatsError {
    StatsError::Read {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }
}

fn read(path: &Path) -> Result<String, StatsError> {
    fs::read_to_string(path).map_err(|source| StatsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, StatsError> {
    read(path)?.trim().parse().map_err(|_| StatsError::Parse {
        path: path.to_owned(),
    })
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`, ...).
fn stat_field(path: &Path, key: &str) -> Result<u64, StatsError> {
    read(path)?
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| StatsError::Parse {
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_usage_subtracts_inactive_file_from_memory() {
        let root = tempfile::tempdir().unwrap();
        let cpu = root.path().join("cpuacct/skiff/c1");
        let mem = root.path().join("memory/skiff/c1");
        fs::create_dir_all(&cpu).unwrap();
        fs::create_dir_all(&mem).unwrap();
        fs::write(cpu.join("cpuacct.usage"), "12345\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "1000\n").unwrap();
        fs::write(
            mem.join("memory.stat"),
            "cache 5\ntotal_inactive_file 300\n",
        )
        .unwrap();
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let files = CgroupFiles::new(root.path(), "/skiff/c1");
        let u = files.usage().unwrap();
        assert_eq!(u.cpu_usage_nanos, 12345);
        assert_eq!(u.memory_usage_bytes, 1000);
        assert_eq!(u.memory_working_set_bytes, 700);
        assert_eq!(files.oom_kills(), 2);
    }

    #[test]
    fn v2_usage_reads_unified_files() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let dir = root.path().join("skiff/c1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        fs::write(dir.join("memory.current"), "4096\n").unwrap();
        fs::write(dir.join("memory.stat"), "anon 1\ninactive_file 96\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        let files = CgroupFiles::new(root.path(), "skiff/c1");
        let u = files.usage().unwrap();
        assert_eq!(u.cpu_usage_nanos, 7000);
        assert_eq!(u.memory_working_set_bytes, 4000);
        assert_eq!(files.oom_kills(), 1);
    }

    #[test]
    fn missing_cgroup_is_an_error_and_no_oom() {
        let root = tempfile::tempdir().unwrap();
        let files = CgroupFiles::new(root.path(), "/gone");
        assert!(files.usage().is_err());
        assert_eq!(files.oom_kills(), 0);
    }
}
