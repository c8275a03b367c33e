//! What the kernel offers the datapath, found at start and said in one line; a missing
//! piece is an error that names the kernel option to turn on.

use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use aya::programs::ProgramType;

/// A piece the socket load balancer cannot do without.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup v2 hierarchy is mounted: the socket load balancer hooks a cgroup v2 subtree \
         (kernel option CONFIG_CGROUPS; mount -t cgroup2 none /sys/fs/cgroup/unified)"
    )]
    NoCgroup2,
    /// The kernel is older than a feature needs.
    #[error("the kernel {found} is older than {need}: {why}")]
    TooOld {
        /// `uname -r`.
        found: String,
        /// The release needed.
        need: &'static str,
        /// What needs it.
        why: &'static str,
    },
    /// The kernel was built without an option the datapath needs.
    #[error("the kernel lacks {option}: {why}")]
    Missing {
        /// The `CONFIG_*` option.
        option: &'static str,
        /// What needs it.
        why: &'static str,
    },
}

/// What the probe found.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// `uname -r`.
    pub kernel: String,
    /// The cgroup v2 mount point.
    pub cgroup2: Option<PathBuf>,
    /// Kernel BTF at `/sys/kernel/btf/vmlinux`.
    pub btf: bool,
    /// cgroup `sock_addr` programs load (`None` when the probe itself failed).
    pub sock_addr: Option<bool>,
    /// TC classifier programs load (for the uplink path).
    pub tc: Option<bool>,
    /// The kernel's build options, from `/proc/config.gz` or `/boot/config-<release>`.
    pub config: KernelConfig,
}

/// `CONFIG_*` options as the kernel's build configuration lists them.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    options: Option<HashMap<String, String>>,
}

impl KernelConfig {
    /// Parses a kernel `.config` text.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let options = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("CONFIG_"))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Self {
            options: Some(options),
        }
    }

    /// `Some(true)` for `=y`/`=m`, `Some(false)` when absent from a known configuration,
    /// `None` when the configuration could not be read.
    #[must_use]
    pub fn enabled(&self, option: &str) -> Option<bool> {
        let options = self.options.as_ref()?;
        Some(matches!(
            options.get(option).map(String::as_str),
            Some("y" | "m")
        ))
    }

    fn read(release: &str) -> Self {
        let gz = std::fs::File::open("/proc/config.gz").ok().and_then(|f| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(f)
                .read_to_string(&mut text)
                .ok()
                .map(|_| text)
        });
        let text = gz.or_else(|| std::fs::read_to_string(format!("/boot/config-{release}")).ok());
        text.map_or_else(Self::default, |t| Self::parse(&t))
    }
}

/// The options the socket load balancer needs, and why.
const SOCKET_LB_OPTIONS: [(&str, &str); 3] = [
    (
        "CONFIG_BPF_SYSCALL",
        "the bpf() system call loads every program",
    ),
    (
        "CONFIG_CGROUP_BPF",
        "the socket hooks (connect4, sendmsg4, recvmsg4, getpeername4) attach to a cgroup",
    ),
    (
        "CONFIG_NET_NS",
        "reverse translations are keyed by network namespace cookie",
    ),
];

impl Features {
    /// Looks at the running kernel.
    #[must_use]
    pub fn probe() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_owned())
            .unwrap_or_default();
        let config = KernelConfig::read(&kernel);
        Self {
            cgroup2: cgroup2_mount(),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            sock_addr: aya::sys::is_program_supported(ProgramType::CgroupSockAddr).ok(),
            tc: aya::sys::is_program_supported(ProgramType::SchedClassifier).ok(),
            kernel,
            config,
        }
    }

    /// Whether the socket load balancer can run here.
    ///
    /// # Errors
    /// The first missing piece, naming its kernel option.
    pub fn require_socket_lb(&self) -> Result<(), ProbeError> {
        for (option, why) in SOCKET_LB_OPTIONS {
            if self.config.enabled(option) == Some(false) {
                return Err(ProbeError::Missing { option, why });
            }
        }
        if self.sock_addr == Some(false) {
            return Err(ProbeError::Missing {
                option: "CONFIG_CGROUP_BPF",
                why: "the kernel refuses cgroup sock_addr programs",
            });
        }
        if self.cgroup2.is_none() {
            return Err(ProbeError::NoCgroup2);
        }
        Ok(())
    }

    /// Whether the TC programs can run on the uplinks: TC classifiers attached through TCX
    /// links (Linux 6.6, `CONFIG_NET_XGRESS`), which the node pins to survive a restart.
    ///
    /// # Errors
    /// The first missing piece, naming its kernel option or release.
    pub fn require_uplink_programs(&self) -> Result<(), ProbeError> {
        const WHY: &str = "the uplink's NodePort programs attach through TCX links";
        if let Some((major, minor)) = release(&self.kernel)
            && (major, minor) < (6, 6)
        {
            return Err(ProbeError::TooOld {
                found: self.kernel.clone(),
                need: "6.6",
                why: WHY,
            });
        }
        for (option, why) in [
            ("CONFIG_NET_XGRESS", WHY),
            (
                "CONFIG_NET_CLS_BPF",
                "the uplink's programs are TC classifiers",
            ),
        ] {
            if self.config.enabled(option) == Some(false) {
                return Err(ProbeError::Missing { option, why });
            }
        }
        if self.tc == Some(false) {
            return Err(ProbeError::Missing {
                option: "CONFIG_NET_CLS_BPF",
                why: "the kernel refuses TC classifier programs",
            });
        }
        Ok(())
    }

    /// One line saying what the datapath uses.
    #[must_use]
    pub fn summary(&self) -> String {
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        let cgroup2 = self
            .cgroup2
            .as_deref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        format!(
            "kernel {}: socket LB on cgroup v2 ({cgroup2}) via bpf_link, hooks connect4/sendmsg4/recvmsg4/getpeername4: {}; netns cookies; kernel BTF: {}; TC classifier for the uplink: {}",
            self.kernel,
            yes_no(self.sock_addr),
            if self.btf { "yes" } else { "no" },
            yes_no(self.tc),
        )
    }
}

/// `(major, minor)` of a kernel release such as `6.18.44-foo`.
fn release(kernel: &str) -> Option<(u32, u32)> {
    let mut parts = kernel.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts, `.../unified` on hybrid).
#[must_use]
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    cgroup2_in(&mounts)
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_option_is_named_in_the_error() {
        let f = Features {
            cgroup2: Some("/sys/fs/cgroup".into()),
            config: KernelConfig::parse(
                "CONFIG_BPF_SYSCALL=y\nCONFIG_NET_NS=y\n# CONFIG_CGROUP_BPF is not set\n",
            ),
            ..Features::default()
        };
        let err = f.require_socket_lb().unwrap_err().to_string();
        assert!(err.contains("CONFIG_CGROUP_BPF"), "{err}");
    }

    #[test]
    fn an_unreadable_configuration_does_not_block_the_start() {
        let f = Features {
            cgroup2: Some("/sys/fs/cgroup".into()),
            sock_addr: Some(true),
            ..Features::default()
        };
        assert!(f.require_socket_lb().is_ok());
    }

    #[test]
    fn no_cgroup2_mount_is_an_error_naming_what_to_mount() {
        let f = Features::default();
        let err = f.require_socket_lb().unwrap_err().to_string();
        assert!(err.contains("cgroup2"), "{err}");
    }

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_hierarchies() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn uplink_programs_need_tcx_from_linux_6_6() {
        let old = Features {
            kernel: "6.1.90-generic".into(),
            ..Features::default()
        };
        let err = old.require_uplink_programs().unwrap_err().to_string();
        assert!(err.contains("6.6") && err.contains("TCX"), "{err}");
        let new = Features {
            kernel: "6.18.44-fc-v1098".into(),
            tc: Some(true),
            ..Features::default()
        };
        assert!(new.require_uplink_programs().is_ok());
        let without = Features {
            kernel: "6.18.0".into(),
            config: KernelConfig::parse("CONFIG_NET_CLS_BPF=y\n"),
            ..Features::default()
        };
        let err = without.require_uplink_programs().unwrap_err().to_string();
        assert!(err.contains("CONFIG_NET_XGRESS"), "{err}");
    }

    #[test]
    fn the_summary_says_what_is_used_in_one_line() {
        let f = Features {
            kernel: "6.18.0".into(),
            cgroup2: Some("/sys/fs/cgroup/unified".into()),
            btf: true,
            sock_addr: Some(true),
            tc: Some(true),
            config: KernelConfig::default(),
        };
        let s = f.summary();
        assert!(!s.contains('\n'));
        assert!(
            s.contains("6.18.0") && s.contains("/sys/fs/cgroup/unified"),
            "{s}"
        );
    }
}
