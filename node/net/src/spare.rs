//! Spare sandboxes on disk: how the pool's sandboxes are built, handed to a pod, thrown
//! away, and found again after a restart.
//!
//! A spare `<id>` lives in `spares/<id>/` (its `net`, `ipc` and `uts` namespace files), is
//! recorded in `spares/<id>.json` once complete, and holds its address in the IPAM table
//! as `spare/<id>` (a `/` no pod uid contains). A claim writes the pod's record (naming the
//! spare's files and veth), hands the address to the pod and removes the spare's record, in
//! that order: whatever point a crash stops it at, [`Inner::reconcile_spares`] finishes or
//! undoes it at the next start.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::{
    Build, Inner, NetworkError, Sandbox, SandboxRequest, absent_is_removed, link,
    pool::{self, Spares},
    read_record, remove_file,
    sandbox::{self, NamespacePaths},
    veth, write_record,
};

/// The spares' directory under the state directory.
pub(super) const DIR: &str = "spares";

/// The IPAM holder of spare `id`.
fn holder(id: &str) -> String {
    format!("spare/{id}")
}

/// The spare id behind an IPAM holder, if it is one.
fn id_of_holder(holder: &str) -> Option<&str> {
    holder.strip_prefix("spare/")
}

/// Spare ids name directories: only what [`pool`] makes (hex digits) is accepted from disk.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Inner {
    fn spares_dir(&self) -> PathBuf {
        self.config.state_dir.join(DIR)
    }

    fn spare_paths(&self, id: &str) -> NamespacePaths {
        let dir = self.spares_dir().join(id);
        NamespacePaths {
            net: dir.join("net"),
            ipc: dir.join("ipc"),
            uts: dir.join("uts"),
        }
    }

    fn spare_record(&self, id: &str) -> PathBuf {
        self.spares_dir().join(format!("{id}.json"))
    }

    /// The spare a sandbox was claimed from, if its namespace files lie in a spare's
    /// directory.
    fn spare_of(&self, sandbox: &Sandbox) -> Option<String> {
        let dir = sandbox.netns.parent()?;
        (dir.parent()? == self.spares_dir())
            .then(|| dir.file_name()?.to_str().map(str::to_owned))
            .flatten()
            .filter(|id| valid_id(id))
    }

    /// Builds spare `id`: address, namespaces, veth on the bridge with the pod side up,
    /// then its record. Leaves nothing behind on failure.
    async fn make_spare(&self, id: &str) -> Result<Sandbox, NetworkError> {
        let dir = self.spares_dir().join(id);
        let built = match fs::create_dir_all(&dir) {
            Ok(()) => {
                let owner = holder(id);
                self.build_at(Build {
                    uid: id,
                    owner: &owner,
                    paths: self.spare_paths(id),
                    hostname: None,
                    // A fresh id: no veth of that name can exist, so none is deleted first.
                    fresh_veth: true,
                    record: self.spare_record(id),
                })
                .await
            }
            Err(source) => Err(NetworkError::State { path: dir, source }),
        };
        if built.is_err() {
            self.discard_logged(id).await;
        }
        built
    }

    /// Removes spare `id`: its veth, namespace files, directory, record and address.
    async fn discard_spare(&self, id: &str) -> Result<(), NetworkError> {
        let handle = link::connect()?;
        veth::remove(&handle, &veth::host_name(&holder(id))).await?;
        let paths = self.spare_paths(id);
        for path in [&paths.net, &paths.ipc, &paths.uts] {
            sandbox::remove(path)?;
        }
        remove_dir(&self.spares_dir().join(id))?;
        remove_file(&self.spare_record(id))?;
        self.ipam.release(&holder(id))?;
        Ok(())
    }

    /// [`Inner::discard_spare`], failures logged: what is left is removed at the next start.
    pub(super) async fn discard_logged(&self, id: &str) {
        if let Err(error) = self.discard_spare(id).await {
            warn!(spare = id, %error, "discarding a spare sandbox");
        }
    }

    /// Gives `spare` to `req`'s pod: its hostname set, the pod's record written (naming the
    /// spare's files and veth), the address handed over, the spare's record removed. No
    /// netlink request: nothing waits for the rtnl lock. On failure the spare is the
    /// caller's to discard, and the pod has no record.
    pub(super) async fn claim(
        &self,
        spare: Sandbox,
        req: &SandboxRequest,
    ) -> Result<Sandbox, NetworkError> {
        let id = spare.uid;
        sandbox::set_hostname(spare.utsns.clone(), req.hostname.clone()).await?;
        let sandbox = Sandbox {
            uid: req.uid.clone(),
            ..spare
        };
        let record = self.record_path(&req.uid);
        write_record(&record, &sandbox)?;
        if let Err(e) = self.ipam.reassign(&holder(&id), &req.uid) {
            let _ = remove_file(&record);
            return Err(e.into());
        }
        if let Err(error) = remove_file(&self.spare_record(&id)) {
            // The pod has its sandbox; the next start sees the spare claimed and removes
            // the stale record.
            warn!(spare = id, %error, "removing a claimed spare's record");
        }
        Ok(sandbox)
    }

    /// After a claimed sandbox's namespace files are gone: its spare directory and any
    /// spare record a crash left.
    pub(super) fn remove_spare_dir_of(&self, sandbox: &Sandbox) -> Result<(), NetworkError> {
        if let Some(id) = self.spare_of(sandbox) {
            remove_dir(&self.spares_dir().join(&id))?;
            remove_file(&self.spare_record(&id))?;
        }
        Ok(())
    }

    /// What an earlier run left of the pool: claims a crash interrupted are finished,
    /// intact spares returned for adoption, everything else removed (namespace mounts,
    /// veths, addresses).
    pub(super) async fn reconcile_spares(&self) -> Result<Vec<Sandbox>, NetworkError> {
        let (dirs, records) = self.spares_on_disk()?;
        let claimed: Vec<(String, String)> = self
            .list_sandboxes()?
            .into_iter()
            .filter_map(|s| Some((self.spare_of(&s)?, s.uid)))
            .collect();
        let addresses: Vec<String> = self
            .ipam
            .allocations()?
            .into_iter()
            .filter_map(|(_, h)| id_of_holder(&h).map(str::to_owned))
            .collect();
        let plan = pool::plan_reconcile(&dirs, &records, &claimed, &addresses);
        for (id, uid) in &plan.finish_claims {
            self.ipam.reassign(&holder(id), uid)?;
            remove_file(&self.spare_record(id))?;
        }
        let mut adopted = Vec::new();
        for id in &plan.candidates {
            match read_record(&self.spare_record(id))? {
                Some(spare)
                    if spare.uid == *id
                        && self.ipam.lookup(&holder(id))? == Some(spare.ip)
                        && self.intact(&spare).await? =>
                {
                    adopted.push(spare);
                }
                _ => self.discard_logged(id).await,
            }
        }
        for id in &plan.remove {
            self.discard_logged(id).await;
        }
        for id in &plan.release {
            self.ipam.release(&holder(id))?;
        }
        if !plan.finish_claims.is_empty()
            || !plan.remove.is_empty()
            || !plan.release.is_empty()
            || adopted.len() < plan.candidates.len()
        {
            info!(
                finished_claims = plan.finish_claims.len(),
                adopted = adopted.len(),
                removed = plan.remove.len() + plan.candidates.len() - adopted.len(),
                released = plan.release.len(),
                "spare sandboxes of an earlier run reconciled"
            );
        }
        Ok(adopted)
    }

    /// Removes every spare on disk that no pod claimed (teardown).
    pub(super) async fn remove_unclaimed_spares(&self) -> Result<(), NetworkError> {
        for spare in self.reconcile_spares().await? {
            self.discard_logged(&spare.uid).await;
        }
        Ok(())
    }

    /// The spare directories and the spare records in the state directory.
    fn spares_on_disk(&self) -> Result<(Vec<String>, Vec<String>), NetworkError> {
        let dir = self.spares_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(source) => return Err(NetworkError::State { path: dir, source }),
        };
        let (mut dirs, mut records) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry.map_err(|source| NetworkError::State {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json") {
                if valid_id(id) {
                    records.push(id.to_owned());
                }
            } else if valid_id(name) && entry.path().is_dir() {
                dirs.push(name.to_owned());
            }
        }
        Ok((dirs, records))
    }
}

#[async_trait::async_trait]
impl Spares for Inner {
    async fn make(&self, id: &str) -> Result<Sandbox, NetworkError> {
        self.make_spare(id).await
    }

    async fn discard(&self, id: &str) -> Result<(), NetworkError> {
        self.discard_spare(id).await
    }
}

fn remove_dir(path: &Path) -> Result<(), NetworkError> {
    absent_is_removed(path, fs::remove_dir(path))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{BridgeNetwork, NetworkConfig};

    #[test]
    fn spare_holders_cannot_be_pod_uids() {
        let h = holder("00ff");
        assert_eq!(id_of_holder(&h), Some("00ff"));
        assert!(
            crate::validate_uid(&h).is_err(),
            "a pod uid never holds a spare's address"
        );
        assert_eq!(id_of_holder("6f1c3e1a-2b7d"), None);
    }

    #[test]
    fn a_claimed_sandbox_is_traced_back_to_its_spare_directory() {
        let net = BridgeNetwork::new(NetworkConfig {
            bridge: "skiff0".into(),
            pod_cidr: "10.244.1.0/24".parse().expect("cidr"),
            state_dir: "/var/lib/skiff".into(),
            masquerade: true,
            mtu: None,
        });
        let inner = &net.inner;
        let paths = inner.spare_paths("0123abcd");
        assert_eq!(paths.net, Path::new("/var/lib/skiff/spares/0123abcd/net"));
        let claimed = Sandbox {
            uid: "pod".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            netns: paths.net,
            ipcns: paths.ipc,
            utsns: paths.uts,
            host_veth: "veth01234567".into(),
        };
        assert_eq!(inner.spare_of(&claimed).as_deref(), Some("0123abcd"));
        let own = inner.paths("pod");
        let built = Sandbox {
            netns: own.net,
            ipcns: own.ipc,
            utsns: own.uts,
            ..claimed
        };
        assert_eq!(inner.spare_of(&built), None, "a sandbox built for its pod");
    }
}
