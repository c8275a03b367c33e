//! What the node is and has: on a real node the host, read from `/proc` and `statvfs`
//! (capacity, allocatable and pressure by the kubelet's rules); on a simulated node fixed
//! figures. Behind a trait, so registration and status are the same code for both.

use std::{fs, path::Path};

use nix::sys::statvfs::statvfs;

use super::{
    capacity::{Reservations, Resources, resources},
    conditions::{Pressure, pressure},
};

/// The version the node reports as its kubelet's.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff";
/// The runtime a real node reports.
pub const RUNTIME_VERSION: &str = "skiff://0.1.0 (libcontainer 0.7)";

/// Errors reading the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A `/proc` or `/sys` file could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file did not hold what the kernel documents.
    #[error("unexpected contents in {0}")]
    Parse(String),
    /// `statvfs` on the state directory failed.
    #[error("statvfs {path}")]
    Statvfs {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// One reading of the host's resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Online CPUs.
    pub cpus: u64,
    /// `MemTotal` in bytes.
    pub memory_total: u64,
    /// `MemAvailable` in bytes.
    pub memory_available: u64,
    /// Size of the filesystem holding the state directory, in bytes.
    pub fs_total: u64,
    /// Bytes on it that an unprivileged writer may still use.
    pub fs_available: u64,
    /// Processes (threads included) running on the host.
    pub pids: u64,
    /// `kernel.pid_max`.
    pub pid_max: u64,
}

/// Facts about the machine that do not change while it runs (`status.nodeInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineInfo {
    /// The kubelet's version (`v1.33.0-skiff`).
    pub kubelet_version: String,
    /// `<runtime>://<version>`.
    pub runtime_version: String,
    /// `amd64`, `arm64`, ... (Go's names).
    pub architecture: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// The DMI product UUID when readable, else the machine ID.
    pub system_uuid: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os_image: String,
}

/// What the node has now.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `capacity` and `allocatable`.
    pub resources: Resources,
    /// Memory, disk and PID pressure.
    pub pressure: Pressure,
}

/// Where a node's facts come from.
pub trait Host: Send + Sync {
    /// What the node has now.
    ///
    /// # Errors
    /// When the host cannot be read.
    fn observe(&self) -> Result<Observed, HostError>;
    /// The machine's identity.
    fn machine(&self) -> MachineInfo;
}

/// The real host, with the filesystem under `state_dir` as the node's disk.
#[derive(Debug, Clone)]
pub struct ProcHost {
    state_dir: std::path::PathBuf,
    reserved: Reservations,
}

/// Go's name for this machine's architecture.
fn architecture() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        other => other.to_owned(),
    }
}

impl ProcHost {
    /// Reads the host and measures the filesystem that holds `state_dir`; `reserved` is
    /// kept back from pods.
    #[must_use]
    pub fn new(state_dir: &Path, reserved: Reservations) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            reserved,
        }
    }

    /// Reads the host now.
    ///
    /// # Errors
    /// When `/proc` or `statvfs` cannot be read.
    pub fn read(&self) -> Result<Reading, HostError> {
        let meminfo = read("/proc/meminfo")?;
        let (memory_total, memory_available) =
            parse_meminfo(&meminfo).ok_or_else(|| HostError::Parse("/proc/meminfo".into()))?;
        let pids = parse_loadavg_threads(&read("/proc/loadavg")?)
            .ok_or_else(|| HostError::Parse("/proc/loadavg".into()))?;
        let pid_max = read("/proc/sys/kernel/pid_max")?
            .trim()
            .parse()
            .map_err(|_| HostError::Parse("/proc/sys/kernel/pid_max".into()))?;
        let fs = statvfs(&self.state_dir).map_err(|source| HostError::Statvfs {
            path: self.state_dir.display().to_string(),
            source,
        })?;
        let block = fs.fragment_size();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Ok(Reading {
            cpus,
            memory_total,
            memory_available,
            fs_total: fs.blocks() * block,
            fs_available: fs.blocks_available() * block,
            pids,
            pid_max,
        })
    }
}

fn read(path: &str) -> Result<String, HostError> {
    fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `MemTotal` and `MemAvailable` in bytes from `/proc/meminfo` text.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// Running threads from `/proc/loadavg` (`0.01 0.02 0.00 2/345 6789`: 345).
fn parse_loadavg_threads(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split('/')
        .nth(1)?
        .parse()
        .ok()
}

/// `PRETTY_NAME` from `/etc/os-release` text.
fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim_matches('"').to_owned())
    })
}

impl Host for ProcHost {
    fn observe(&self) -> Result<Observed, HostError> {
        let reading = self.read()?;
        Ok(Observed {
            resources: resources(&reading, &self.reserved),
            pressure: pressure(&reading, &self.reserved),
        })
    }

    fn machine(&self) -> MachineInfo {
        let text = |path: &str| read(path).map(|s| s.trim().to_owned()).unwrap_or_default();
        let machine_id = text("/etc/machine-id");
        let uuid = text("/sys/class/dmi/id/product_uuid");
        MachineInfo {
            kubelet_version: KUBELET_VERSION.to_owned(),
            runtime_version: RUNTIME_VERSION.to_owned(),
            architecture: architecture(),
            system_uuid: if uuid.is_empty() {
                machine_id.clone()
            } else {
                uuid
            },
            machine_id,
            boot_id: text("/proc/sys/kernel/random/boot_id"),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: parse_os_release(&text("/etc/os-release")).unwrap_or_else(|| "Linux".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((16_384_000 * 1024, 8_192_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn loadavg_gives_the_thread_count() {
        assert_eq!(
            parse_loadavg_threads("0.01 0.02 0.00 2/345 6789\n"),
            Some(345)
        );
        assert_eq!(parse_loadavg_threads("garbage"), None);
    }

    #[test]
    fn os_release_pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_os_release(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn the_real_host_reads_sane_numbers() {
        let host = ProcHost::new(Path::new("/"), Reservations::default());
        let reading = host.read().expect("read /proc");
        assert!(reading.cpus >= 1);
        assert!(reading.memory_available <= reading.memory_total);
        assert!(reading.fs_available <= reading.fs_total);
        assert!(reading.pids >= 1 && reading.pids <= reading.pid_max);
        let observed = host.observe().expect("observe");
        assert!(observed.resources.allocatable.contains_key("memory"));
        assert_eq!(host.machine().kubelet_version, KUBELET_VERSION);
    }
}
