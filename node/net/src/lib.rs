//! skiff-node-net is the pod network on a node: the node's bridge, per-pod namespaces and
//! veths, IPAM over the node's pod CIDR, routes (or a VXLAN tunnel) to the other nodes' pod
//! CIDRs, and egress masquerade for traffic leaving the cluster.
//!
//! Everything a sandbox consists of lives under the state directory (namespace files, the
//! address allocation, a record of the finished sandbox), so a restarted daemon finds its
//! pods' networks again and can remove the ones it no longer needs.

#![forbid(unsafe_code)]

mod bridge;
pub mod ipam;
mod link;
pub mod masquerade;
pub mod overlay;
pub mod peers;
mod pool;
mod sandbox;
mod spare;
pub mod uplink;
pub mod veth;

use std::{
    collections::HashMap,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use skiff_types::Ipv4Cidr;
use tracing::{debug, info, warn};

pub use self::{
    bridge::BridgeError, ipam::IpamError, link::LinkError, masquerade::MasqueradeError,
    sandbox::NamespaceError, veth::VethError,
};
use self::{ipam::Ipam, pool::Pool, sandbox::NamespacePaths, veth::PodSide};

/// The longest hostname the kernel accepts (`__NEW_UTS_LEN`).
const MAX_HOSTNAME: usize = 64;

/// Errors of pod networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A pod uid cannot name files in the state directory.
    #[error("invalid pod uid {0:?}")]
    InvalidUid(String),
    /// A hostname is empty or longer than the kernel allows.
    #[error("invalid hostname {0:?}")]
    InvalidHostname(String),
    /// The bridge does not exist: `setup` has not run.
    #[error("bridge {0} does not exist: network setup has not run")]
    NoBridge(String),
    /// Address allocation failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The bridge or forwarding could not be set up.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// A netlink request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A veth pair could not be created or removed.
    #[error(transparent)]
    Veth(#[from] VethError),
    /// A namespace could not be created or removed.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// The masquerade table could not be applied or removed.
    #[error(transparent)]
    Masquerade(#[from] MasqueradeError),
    /// The state directory could not be read or written.
    #[error("network state {path}: {source}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The node's pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The bridge's name, e.g. `skiff0`; also names the nftables table (`skiff-<bridge>`).
    pub bridge: String,
    /// The node's pod CIDR; its first host is the gateway on the bridge.
    pub pod_cidr: Ipv4Cidr,
    /// Where namespace files, allocations and sandbox records live.
    pub state_dir: PathBuf,
    /// Whether to masquerade pod traffic leaving the pod CIDR.
    pub masquerade: bool,
    /// The MTU of the bridge and veths, if not the kernel default.
    pub mtu: Option<u32>,
}

/// What a pod's sandbox is made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRequest {
    /// The pod's uid.
    pub uid: String,
    /// The hostname in the pod's UTS namespace.
    pub hostname: String,
}

/// A pod's network sandbox: its namespaces (join them by path) and its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The pod's uid.
    pub uid: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod's default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The network namespace file.
    pub netns: PathBuf,
    /// The IPC namespace file.
    pub ipcns: PathBuf,
    /// The UTS namespace file.
    pub utsns: PathBuf,
    /// The host side of the pod's veth pair.
    pub host_veth: String,
}

/// Pod networking as the pod worker uses it.
#[async_trait::async_trait]
pub trait PodNetwork: Send + Sync {
    /// Bridge, gateway address, forwarding, masquerade; idempotent.
    async fn setup(&self) -> Result<(), NetworkError>;
    /// Makes `req.uid`'s sandbox; an existing complete one is returned as is, a partial one
    /// (left by a crash) is rebuilt with the same address.
    async fn create_sandbox(&self, req: &SandboxRequest) -> Result<Sandbox, NetworkError>;
    /// Removes `uid`'s veth, namespace mounts and files, and address; idempotent.
    async fn remove_sandbox(&self, uid: &str) -> Result<(), NetworkError>;
    /// The complete sandboxes recorded in the state directory (for adoption and cleanup of
    /// orphans).
    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, NetworkError>;
    /// Removes the bridge and the nftables table.
    async fn teardown(&self) -> Result<(), NetworkError>;
    /// A TCP connection to `localhost:port` inside `uid`'s network namespace, as the
    /// kubelet's port-forward makes (a server bound to the pod's loopback is reached too).
    async fn connect(&self, uid: &str, port: u16) -> Result<std::net::TcpStream, NetworkError>;
}

/// Pod networking on a Linux bridge, configured with rtnetlink in the network namespace of
/// the thread that calls it; optionally with a pool of spare sandboxes built ahead of the
/// pods that claim them (see [`BridgeNetwork::with_sandbox_pool`]).
#[derive(Debug)]
pub struct BridgeNetwork {
    inner: Arc<Inner>,
    pool: Arc<Pool<Inner>>,
}

/// What builds and removes sandboxes; shared with the pool's builders.
#[derive(Debug)]
struct Inner {
    config: NetworkConfig,
    ipam: Ipam,
    /// One lock per pod uid, so a create and a remove of one pod never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BridgeNetwork {
    /// Pod networking for `config`, without spare sandboxes; nothing is touched until
    /// [`PodNetwork::setup`].
    #[must_use]
    pub fn new(config: NetworkConfig) -> Self {
        let ipam = Ipam::new(config.state_dir.join("ipam"), config.pod_cidr);
        let inner = Arc::new(Inner {
            config,
            ipam,
            locks: Mutex::new(HashMap::new()),
        });
        let pool = Arc::new(Pool::new(Arc::clone(&inner), 0));
        Self { inner, pool }
    }

    /// Keeps `spares` complete sandboxes (namespaces, veth on the bridge, address) ready
    /// from [`PodNetwork::setup`] on, rebuilt in the background after each claim, so a pod's
    /// sandbox is handed over without a netlink request; 0 disables the pool. Each spare
    /// holds an address of the pod CIDR. Spares left by an earlier run are adopted (or
    /// removed when beyond `spares`) at setup.
    #[must_use]
    pub fn with_sandbox_pool(mut self, spares: usize) -> Self {
        self.pool.abort();
        self.pool = Arc::new(Pool::new(Arc::clone(&self.inner), spares));
        self
    }

    /// The gateway: the first host of the pod CIDR.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.ipam.gateway()
    }

    /// The spare sandboxes ready now.
    #[must_use]
    pub fn spare_sandboxes(&self) -> usize {
        self.pool.ready()
    }

    /// Waits until the pool of spare sandboxes is full (or its builds fail, or it is
    /// disabled or not started): for tests and benchmarks that start from a settled pool.
    pub async fn sandbox_pool_filled(&self) {
        self.pool.filled().await;
    }

    /// Adopts the spares an earlier run left (removing those it cannot use) and starts the
    /// pool's builders; once per instance.
    async fn start_pool(&self) -> Result<(), NetworkError> {
        if self.pool.launched() {
            return Ok(());
        }
        let adoptable = self.inner.reconcile_spares().await?;
        let excess = self.pool.launch(adoptable);
        for spare in excess {
            self.inner.discard_logged(&spare.uid).await;
        }
        if self.pool.target() > 0 {
            info!(
                spares = self.pool.target(),
                adopted = self.pool.ready(),
                "sandbox pool started"
            );
        }
        Ok(())
    }
}

impl Drop for BridgeNetwork {
    fn drop(&mut self) {
        self.pool.abort();
    }
}

impl Inner {
    /// The gateway: the first host of the pod CIDR.
    fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    fn paths(&self, uid: &str) -> NamespacePaths {
        let dir = &self.config.state_dir;
        NamespacePaths {
            net: dir.join("netns").join(uid),
            ipc: dir.join("ipcns").join(uid),
            uts: dir.join("utsns").join(uid),
        }
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.config
            .state_dir
            .join("sandboxes")
            .join(format!("{uid}.json"))
    }

    fn lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(uid.to_owned()).or_default())
    }

    fn forget_lock(&self, uid: &str) {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if locks.get(uid).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(uid);
        }
    }

    fn ensure_dirs(&self) -> Result<(), NetworkError> {
        for sub in ["netns", "ipcns", "utsns", "ipam", "sandboxes", spare::DIR] {
            let path = self.config.state_dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| NetworkError::State { path, source })?;
        }
        Ok(())
    }

    /// Whether the recorded sandbox still stands: its namespaces are mounted and its veth
    /// exists (neither survives a host reboot, while the state directory may).
    async fn intact(&self, sandbox: &Sandbox) -> Result<bool, NetworkError> {
        let mounted = [&sandbox.netns, &sandbox.ipcns, &sandbox.utsns]
            .into_iter()
            .all(|p| sandbox::is_mounted(p));
        if !mounted {
            return Ok(false);
        }
        let handle = link::connect()?;
        Ok(link::index_of(&handle, &sandbox.host_veth).await?.is_some())
    }

    /// Removes everything of `uid` except its address, which a rebuild reuses: the parts
    /// its record names (a sandbox claimed from the pool lives under the spare's names) and
    /// those named after the uid (a build that never finished its record).
    async fn remove_parts(&self, uid: &str) -> Result<(), NetworkError> {
        let handle = link::connect()?;
        let own = self.paths(uid);
        let record = read_record(&self.record_path(uid))?;
        let veth = record
            .as_ref()
            .map_or_else(|| veth::host_name(uid), |r| r.host_veth.clone());
        veth::remove(&handle, &veth).await?;
        if let Some(record) = &record {
            for path in [&record.netns, &record.ipcns, &record.utsns] {
                sandbox::remove(path)?;
            }
            self.remove_spare_dir_of(record)?;
        }
        for path in [&own.net, &own.ipc, &own.uts] {
            sandbox::remove(path)?;
        }
        remove_file(&self.record_path(uid))
    }

    /// Whether anything of `uid` may exist from an earlier try: a record, a namespace
    /// file, or an address. A pod seen for the first time has none, and its sandbox can come
    /// from the pool.
    fn has_leftovers(&self, uid: &str) -> Result<bool, NetworkError> {
        let own = self.paths(uid);
        Ok(self.record_path(uid).exists()
            || [&own.net, &own.ipc, &own.uts].iter().any(|p| p.exists())
            || self.ipam.lookup(uid)?.is_some())
    }

    async fn build(&self, req: &SandboxRequest) -> Result<Sandbox, NetworkError> {
        self.build_at(Build {
            uid: &req.uid,
            owner: &req.uid,
            paths: self.paths(&req.uid),
            hostname: Some(req.hostname.clone()),
            fresh_veth: false,
            record: self.record_path(&req.uid),
        })
        .await
    }

    /// Builds a sandbox (a pod's own, or a spare): an address for `owner`, the namespaces at
    /// `paths`, the veth named after `owner` on the bridge with the pod side configured, then
    /// the record. The caller removes what a failure left.
    async fn build_at(&self, build: Build<'_>) -> Result<Sandbox, NetworkError> {
        let handle = link::connect()?;
        let bridge = link::index_of(&handle, &self.config.bridge)
            .await?
            .ok_or_else(|| NetworkError::NoBridge(self.config.bridge.clone()))?;
        let ip = self.ipam.allocate(build.owner)?;
        let pod_handle = sandbox::create(build.paths.clone(), build.hostname).await?;
        debug!(owner = build.owner, %ip, "sandbox namespaces created");
        let host_veth = veth::create(
            &handle,
            &pod_handle,
            (veth::host_name(build.owner), build.fresh_veth),
            bridge,
            PodSide {
                netns: build.paths.net.clone(),
                ip,
                prefix: self.config.pod_cidr.prefix(),
                gateway: self.gateway(),
                mtu: self.config.mtu,
            },
        )
        .await?;
        let sandbox = Sandbox {
            uid: build.uid.to_owned(),
            ip,
            gateway: self.gateway(),
            netns: build.paths.net,
            ipcns: build.paths.ipc,
            utsns: build.paths.uts,
            host_veth,
        };
        write_record(&build.record, &sandbox)?;
        Ok(sandbox)
    }
}

/// What [`Inner::build_at`] makes.
struct Build<'a> {
    /// The uid the record names (the pod's, or the spare's id).
    uid: &'a str,
    /// Who holds the address and names the veth (the pod's uid, or the spare's holder).
    owner: &'a str,
    /// Where the namespaces are mounted.
    paths: NamespacePaths,
    /// The hostname, if the pod is known already.
    hostname: Option<String>,
    /// Whether the veth name is new, so no leftover of that name is deleted first.
    fresh_veth: bool,
    /// Where the record is written.
    record: PathBuf,
}

#[async_trait::async_trait]
impl PodNetwork for BridgeNetwork {
    async fn setup(&self) -> Result<(), NetworkError> {
        self.inner.setup().await?;
        self.start_pool().await
    }

    async fn create_sandbox(&self, req: &SandboxRequest) -> Result<Sandbox, NetworkError> {
        validate_uid(&req.uid)?;
        if req.hostname.is_empty() || req.hostname.len() > MAX_HOSTNAME {
            return Err(NetworkError::InvalidHostname(req.hostname.clone()));
        }
        let inner = &self.inner;
        let lock = inner.lock(&req.uid);
        let _guard = lock.lock().await;
        if let Some(existing) = read_record(&inner.record_path(&req.uid))? {
            if inner.intact(&existing).await? {
                return Ok(existing);
            }
            warn!(
                uid = req.uid,
                "recorded sandbox is incomplete, rebuilding it"
            );
        }
        inner.ensure_dirs()?;
        // A pod that never had a sandbox takes a spare; one rebuilt after a crash keeps its
        // address and is built anew.
        if !inner.has_leftovers(&req.uid)?
            && let Some(spare) = self.pool.take()
        {
            let id = spare.uid.clone();
            match inner.claim(spare, req).await {
                Ok(sandbox) => {
                    info!(uid = sandbox.uid, ip = %sandbox.ip, veth = sandbox.host_veth, spare = id, "sandbox created");
                    return Ok(sandbox);
                }
                Err(error) => {
                    warn!(uid = req.uid, spare = id, %error, "claiming a spare sandbox; building one");
                    inner.discard_logged(&id).await;
                }
            }
        }
        let _demand = self.pool.on_demand();
        inner.create_on_demand(req).await
    }

    async fn remove_sandbox(&self, uid: &str) -> Result<(), NetworkError> {
        self.inner.remove_sandbox(uid).await
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, NetworkError> {
        self.inner.list_sandboxes()
    }

    async fn teardown(&self) -> Result<(), NetworkError> {
        for spare in self.pool.close().await {
            self.inner.discard_logged(&spare.uid).await;
        }
        // Spares of an earlier run this instance never adopted (setup did not run).
        self.inner.remove_unclaimed_spares().await?;
        self.inner.teardown().await
    }

    async fn connect(&self, uid: &str, port: u16) -> Result<std::net::TcpStream, NetworkError> {
        validate_uid(uid)?;
        let netns = read_record(&self.inner.record_path(uid))?
            .map_or_else(|| self.inner.paths(uid).net, |r| r.netns);
        Ok(sandbox::connect_local(netns, port).await?)
    }
}

impl Inner {
    async fn setup(&self) -> Result<(), NetworkError> {
        self.ensure_dirs()?;
        let handle = link::connect()?;
        bridge::ensure(
            &handle,
            &self.config.bridge,
            (self.gateway(), self.config.pod_cidr.prefix()),
            self.config.mtu,
        )
        .await?;
        bridge::enable_forwarding()?;
        if self.config.masquerade {
            masquerade::apply(&self.config.bridge, self.config.pod_cidr)?;
        } else if let Err(error) = masquerade::remove(&self.config.bridge) {
            // Without masquerade nftables may not even be installed; a table left from an
            // earlier configuration is worth a warning, not a node that cannot start.
            warn!(%error, "removing the masquerade table of an earlier configuration");
        }
        info!(
            bridge = self.config.bridge,
            pod_cidr = %self.config.pod_cidr,
            gateway = %self.gateway(),
            masquerade = self.config.masquerade,
            "pod network ready"
        );
        Ok(())
    }

    /// Builds `req`'s sandbox now, after removing what an earlier try left; the caller
    /// holds the uid's lock.
    async fn create_on_demand(&self, req: &SandboxRequest) -> Result<Sandbox, NetworkError> {
        if self.has_leftovers(&req.uid)? {
            self.remove_parts(&req.uid).await?;
        }
        match self.build(req).await {
            Ok(sandbox) => {
                info!(uid = sandbox.uid, ip = %sandbox.ip, veth = sandbox.host_veth, "sandbox created");
                Ok(sandbox)
            }
            Err(e) => {
                if let Err(cleanup) = self.remove_parts(&req.uid).await {
                    warn!(uid = req.uid, error = %cleanup, "cleaning up a failed sandbox");
                }
                if let Err(cleanup) = self.ipam.release(&req.uid) {
                    warn!(uid = req.uid, error = %cleanup, "releasing a failed sandbox's address");
                }
                Err(e)
            }
        }
    }

    async fn remove_sandbox(&self, uid: &str) -> Result<(), NetworkError> {
        validate_uid(uid)?;
        let lock = self.lock(uid);
        let guard = lock.lock().await;
        self.remove_parts(uid).await?;
        let released = self.ipam.release(uid)?;
        drop(guard);
        drop(lock);
        self.forget_lock(uid);
        info!(uid, ip = ?released, "sandbox removed");
        Ok(())
    }

    fn list_sandboxes(&self) -> Result<Vec<Sandbox>, NetworkError> {
        let dir = self.config.state_dir.join("sandboxes");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(NetworkError::State { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| NetworkError::State {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            if let Some(sandbox) = read_record(&path)? {
                out.push(sandbox);
            }
        }
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        Ok(out)
    }

    async fn teardown(&self) -> Result<(), NetworkError> {
        let handle = link::connect()?;
        bridge::remove(&handle, &self.config.bridge).await?;
        match masquerade::remove(&self.config.bridge) {
            Ok(()) => {}
            Err(e) if self.config.masquerade => return Err(e.into()),
            Err(error) => warn!(%error, "removing the masquerade table"),
        }
        info!(bridge = self.config.bridge, "pod network removed");
        Ok(())
    }
}

/// Pod uids name files: they must not be empty, hidden, or reach elsewhere.
fn validate_uid(uid: &str) -> Result<(), NetworkError> {
    let ok = !uid.is_empty()
        && uid.len() <= 128
        && !uid.starts_with('.')
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidUid(uid.to_owned()))
    }
}

fn read_record(path: &Path) -> Result<Option<Sandbox>, NetworkError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetworkError::State {
                path: path.to_owned(),
                source,
            });
        }
    };
    match serde_json::from_str(&text) {
        Ok(sandbox) => Ok(Some(sandbox)),
        Err(error) => {
            // A torn record means the sandbox never finished: treat it as absent.
            warn!(path = %path.display(), %error, "ignoring unreadable sandbox record");
            Ok(None)
        }
    }
}

/// Writes the record through a temporary file and a rename, so a crash never leaves a
/// half-written record that claims a finished sandbox.
fn write_record(path: &Path, sandbox: &Sandbox) -> Result<(), NetworkError> {
    let state = |source| NetworkError::State {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(sandbox).map_err(|e| state(io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json).map_err(state)?;
    fs::rename(&tmp, path).map_err(state)
}

fn remove_file(path: &Path) -> Result<(), NetworkError> {
    absent_is_removed(path, fs::remove_file(path))
}

/// A removal's outcome, where a path that was already gone counts as removed.
fn absent_is_removed(path: &Path, removal: io::Result<()>) -> Result<(), NetworkError> {
    match removal {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetworkError::State {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_could_escape_the_state_directory_are_rejected() {
        for bad in ["", "..", ".hidden", "a/b", "a b"] {
            assert!(validate_uid(bad).is_err(), "{bad:?}");
        }
        validate_uid("6f1c3e1a-2b7d-4c55-9a0e-1d2f3a4b5c6d").unwrap();
    }

    #[test]
    fn sandbox_paths_sit_under_the_state_directory() {
        let net = BridgeNetwork::new(NetworkConfig {
            bridge: "skiff0".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            state_dir: "/var/lib/skiff".into(),
            masquerade: true,
            mtu: None,
        });
        let paths = net.inner.paths("u1");
        assert_eq!(paths.net, Path::new("/var/lib/skiff/netns/u1"));
        assert_eq!(paths.ipc, Path::new("/var/lib/skiff/ipcns/u1"));
        assert_eq!(paths.uts, Path::new("/var/lib/skiff/utsns/u1"));
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 244, 1, 1));
    }

    #[test]
    fn records_round_trip_and_torn_ones_count_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1.json");
        let sandbox = Sandbox {
            uid: "u1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            netns: "/s/netns/u1".into(),
            ipcns: "/s/ipcns/u1".into(),
            utsns: "/s/utsns/u1".into(),
            host_veth: "veth01234567".into(),
        };
        write_record(&path, &sandbox).unwrap();
        assert_eq!(read_record(&path).unwrap(), Some(sandbox));
        fs::write(&path, "{\"uid\":").unwrap();
        assert_eq!(read_record(&path).unwrap(), None);
        assert_eq!(read_record(&dir.path().join("none.json")).unwrap(), None);
    }
}
