//! Pod address management over the node's pod CIDR, host-local style: one file per
//! allocated address holding the pod uid, so the directory itself is the allocation table
//! and a daemon restart never hands an address out twice.

use std::{
    collections::HashMap,
    fs, io,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use skiff_types::Ipv4Cidr;
use tracing::debug;

/// The file that remembers the last address handed out, so allocation walks the range
/// round-robin instead of reusing a just-released address at once (stale ARP and conntrack
/// entries of the old pod would point at the new one).
const LAST_RESERVED: &str = "last_reserved_ip";

/// Errors of the address allocator.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The range has no address left for a pod.
    #[error("no free address left in {cidr}")]
    Exhausted {
        /// The range.
        cidr: Ipv4Cidr,
    },
    /// The range is too small to hold a gateway and a pod.
    #[error("pod cidr {cidr} is too small: it needs a gateway and pod addresses")]
    TooSmall {
        /// The range.
        cidr: Ipv4Cidr,
    },
    /// The state directory could not be read or written.
    #[error("ipam state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Allocates pod addresses from one IPv4 range, recording each in `<dir>/<ip>`.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Cidr,
    /// Serializes allocations of this process so two calls for one uid cannot both miss
    /// each other's file; files created with `O_EXCL` guard against everyone else. Holds
    /// this process's view of the table (uid -> address), read from the directory once:
    /// reading every file on each allocation made a burst of pods quadratic.
    held: Mutex<Option<HashMap<String, Ipv4Addr>>>,
}

impl Ipam {
    /// An allocator for `cidr` over `dir`, which is created on first allocation.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, cidr: Ipv4Cidr) -> Self {
        Self {
            dir: dir.into(),
            cidr,
            held: Mutex::new(None),
        }
    }

    /// The gateway: the first host of the range.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.cidr)
    }

    /// The address of `uid`: its existing one, else the next free one after the last
    /// handed out (skipping network, gateway and broadcast).
    ///
    /// # Errors
    /// If the range is exhausted or the directory cannot be read or written.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if self.cidr.prefix() > 30 {
            return Err(IpamError::TooSmall { cidr: self.cidr });
        }
        let mut guard = self.table()?;
        let held = guard.get_or_insert_default();
        if let Some(ip) = held.get(uid) {
            return Ok(*ip);
        }
        fs::create_dir_all(&self.dir).map_err(|source| IpamError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let (first, last) = self.host_range();
        let size = last - first + 1;
        let start = self
            .last_reserved()
            .filter(|ip| (first..=last).contains(ip))
            .map_or(first, |ip| if ip == last { first } else { ip + 1 });
        for step in 0..size {
            let candidate = first + (start - first + step) % size;
            let ip = Ipv4Addr::from(candidate);
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    // Not fsynced: the file must survive the daemon (a SIGKILL keeps the
                    // page cache), and a host crash takes every pod namespace with it.
                    file.write_all(uid.as_bytes())
                        .map_err(|source| IpamError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    held.insert(uid.to_owned(), ip);
                    self.remember(ip);
                    debug!(%ip, uid, "allocated pod address");
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(IpamError::Io { path, source }),
            }
        }
        Err(IpamError::Exhausted { cidr: self.cidr })
    }

    /// The address allocated to `uid`, if any.
    ///
    /// # Errors
    /// If the directory cannot be read.
    pub fn lookup(&self, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .table()?
            .as_ref()
            .and_then(|held| held.get(uid).copied()))
    }

    /// Releases the address of `uid`; an address holding another uid is left alone.
    /// Returns the released address.
    ///
    /// # Errors
    /// If the directory cannot be read or the file removed.
    pub fn release(&self, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut guard = self.table()?;
        let held = guard.get_or_insert_default();
        let Some(ip) = held.get(uid).copied() else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {
                held.remove(uid);
                debug!(%ip, uid, "released pod address");
                Ok(Some(ip))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                held.remove(uid);
                Ok(None)
            }
            Err(source) => Err(IpamError::Io { path, source }),
        }
    }

    /// Hands the address of `from` to `to` (a spare sandbox claimed by a pod): the file is
    /// rewritten through a rename, so it always names one holder. Returns the address, or
    /// `None` when `from` holds none.
    ///
    /// # Errors
    /// If the directory cannot be read or the file rewritten.
    pub fn reassign(&self, from: &str, to: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut guard = self.table()?;
        let held = guard.get_or_insert_default();
        let Some(ip) = held.get(from).copied() else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        // Not an address, so `allocations` skips it should a crash leave it behind.
        let tmp = self.dir.join(format!(".{ip}.tmp"));
        let io = |source| IpamError::Io {
            path: path.clone(),
            source,
        };
        fs::write(&tmp, to.as_bytes()).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        held.remove(from);
        held.insert(to.to_owned(), ip);
        debug!(%ip, from, to, "pod address handed over");
        Ok(Some(ip))
    }

    /// Every allocation: address and the uid it holds.
    ///
    /// # Errors
    /// If the directory cannot be read.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(IpamError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| IpamError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let holder = read_holder(&entry.path())?;
            if let Some(holder) = holder {
                out.push((ip, holder));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The table, read from the directory on first use; always `Some` on success.
    fn table(&self) -> Result<MutexGuard<'_, Option<HashMap<String, Ipv4Addr>>>, IpamError> {
        let mut guard = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            let held = self
                .allocations()?
                .into_iter()
                .map(|(ip, uid)| (uid, ip))
                .collect();
            *guard = Some(held);
        }
        Ok(guard)
    }

    /// First and last assignable host as integers (gateway, network and broadcast excluded).
    fn host_range(&self) -> (u32, u32) {
        let network = u32::from(self.cidr.network());
        let broadcast = u32::from(self.cidr.last());
        (network + 2, broadcast - 1)
    }

    fn last_reserved(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
    }

    fn remember(&self, ip: Ipv4Addr) {
        // Only a hint for where to continue: losing it costs address reuse order, not safety.
        if let Err(error) = fs::write(self.dir.join(LAST_RESERVED), ip.to_string()) {
            debug!(%error, "could not record the last reserved address");
        }
    }
}

/// The uid held by an allocation file; `None` if it vanished meanwhile.
fn read_holder(path: &Path) -> Result<Option<String>, IpamError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IpamError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The gateway of a pod range: its first host.
#[must_use]
pub(super) fn gateway(cidr: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_in_order_skipping_network_and_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("b").unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.allocate("c").unwrap(), Ipv4Addr::new(10, 244, 1, 4));
    }

    #[test]
    fn same_uid_gets_its_existing_address_back() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        let a = ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        assert_eq!(ipam.allocate("a").unwrap(), a);
        assert_eq!(ipam.lookup("a").unwrap(), Some(a));
        assert_eq!(ipam.allocations().unwrap().len(), 2);
    }

    #[test]
    fn reopened_directory_never_hands_out_an_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
            (ipam.allocate("a").unwrap(), ipam.allocate("b").unwrap())
        };
        let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        assert_eq!(ipam.allocate("a").unwrap(), first.0);
        assert_eq!(ipam.allocate("b").unwrap(), first.1);
        let c = ipam.allocate("c").unwrap();
        assert_ne!(c, first.0);
        assert_ne!(c, first.1);
    }

    #[test]
    fn released_address_is_not_reused_before_the_range_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        let a = ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        assert_eq!(ipam.release("a").unwrap(), Some(a));
        assert_eq!(ipam.allocate("c").unwrap(), Ipv4Addr::new(10, 244, 1, 4));
    }

    #[test]
    fn exhausted_range_is_an_error_and_skips_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        // /29: network .0, gateway .1, hosts .2-.6, broadcast .7.
        let ipam = Ipam::new(dir.path(), cidr("10.0.0.0/29"));
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("p{i}")).unwrap())
            .collect();
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert!(matches!(
            ipam.allocate("x"),
            Err(IpamError::Exhausted { .. })
        ));
        ipam.release("p2").unwrap();
        assert_eq!(ipam.allocate("x").unwrap(), Ipv4Addr::new(10, 0, 0, 4));
    }

    #[test]
    fn release_leaves_another_uids_address_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        let a = ipam.allocate("a").unwrap();
        assert_eq!(ipam.release("b").unwrap(), None);
        assert_eq!(ipam.lookup("a").unwrap(), Some(a));
        assert_eq!(ipam.release("a").unwrap(), Some(a));
        assert_eq!(ipam.release("a").unwrap(), None);
        assert!(ipam.allocations().unwrap().is_empty());
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = std::sync::Arc::new(Ipam::new(dir.path(), cidr("10.244.1.0/24")));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ipam = std::sync::Arc::clone(&ipam);
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| ipam.allocate(&format!("p{}", i % 5 + t * 5)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40, "40 uids, 40 distinct addresses");
        assert_eq!(ipam.allocations().unwrap().len(), 40);
    }

    #[test]
    fn reassigned_address_belongs_to_its_new_holder_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        let ip = ipam.allocate("spare/1").unwrap();
        assert_eq!(ipam.reassign("spare/1", "pod").unwrap(), Some(ip));
        assert_eq!(ipam.lookup("pod").unwrap(), Some(ip));
        assert_eq!(ipam.lookup("spare/1").unwrap(), None);
        assert_eq!(ipam.reassign("spare/1", "other").unwrap(), None);
        let reopened = Ipam::new(dir.path(), cidr("10.244.1.0/24"));
        assert_eq!(
            reopened.allocations().unwrap(),
            vec![(ip, "pod".to_owned())]
        );
        assert_eq!(reopened.release("pod").unwrap(), Some(ip));
    }

    #[test]
    fn range_without_room_for_pods_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Ipam::new(dir.path(), cidr("10.0.0.0/31")).allocate("a"),
            Err(IpamError::TooSmall { .. })
        ));
    }
}
