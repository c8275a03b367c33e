//! `delete`: force-removes a container: kills it if needed, waits for the exit watcher (so
//! the OOM counter and the last output are captured), then removes libcontainer's state
//! with the v1 cgroup, the v2 cgroup directory and the bundle.

use std::{fs, path::Path, time::Duration};

use libcontainer::{
    container::{Container, ContainerStatus},
    error::LibcontainerError,
};

use super::{
    RuntimeError,
    container_start::{container_cgroup_dirs, remove_cgroup_dir},
    libcontainer::{Libcontainer, blocking},
    pidfd::pidfd_signal,
};

/// How long `delete` waits for the init to be reaped after `SIGKILL`.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

impl Libcontainer {
    pub(super) async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        let tracked = self.tracked(id);
        if let Some(t) = &tracked {
            if let Some(pidfd) = &t.pidfd
                && t.exit.borrow().is_none()
            {
                pidfd_signal(pidfd, libc::SIGKILL)
                    .map_err(|e| RuntimeError::io(id, "sending SIGKILL", e))?;
            }
            let mut exit = t.exit.clone();
            if tokio::time::timeout(KILL_TIMEOUT, exit.wait_for(Option::is_some))
                .await
                .is_err()
            {
                tracing::warn!(id, "init not reaped after SIGKILL; deleting anyway");
            }
        }
        let meta = match &tracked {
            Some(t) => Some(t.meta.clone()),
            None => self.load_meta(id).await?,
        };

        let root = self.state_root.join(id);
        let id_owned = id.to_owned();
        let cgroup_root = self.cgroup_root.clone();
        blocking(id, move || {
            if root.exists() {
                let mut container =
                    Container::load(root).map_err(|e| RuntimeError::lc(&id_owned, "load", &e))?;
                remove_state(&mut container, &cgroup_root)
                    .map_err(|e| RuntimeError::lc(&id_owned, "delete", &e))?;
            }
            if let Some(meta) = meta {
                if let Some(dir) = &meta.cgroup_v2_path
                    && !remove_cgroup_dir(dir)
                {
                    return Err(RuntimeError::io(
                        &id_owned,
                        format!("removing {}", dir.display()),
                        std::io::Error::from(std::io::ErrorKind::ResourceBusy),
                    ));
                }
                match fs::remove_dir_all(&meta.bundle_dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(RuntimeError::io(&id_owned, "removing bundle", e)),
                }
            }
            Ok(())
        })
        .await?;
        self.lock().remove(id);
        tracing::info!(id, "container deleted");
        Ok(())
    }
}

/// Removes a container's libcontainer state and its v1 cgroups, as libcontainer's forced
/// `delete` does. A stopped container without post-stop hooks (every container skiff makes,
/// once its init is reaped) is removed here: libcontainer's `delete` builds a cgroup manager
/// to remove the cgroups, which reads the whole mount table once per v1 controller (twelve
/// times, under the kernel's mount-namespace lock), and that was the larger part of
/// deleting a container on a node with many pods. Anything else (still running, created,
/// with hooks) goes to libcontainer.
fn remove_state(container: &mut Container, cgroup_root: &Path) -> Result<(), LibcontainerError> {
    container.refresh_status()?;
    let config = container.spec().ok();
    let stopped = container.status() == ContainerStatus::Stopped;
    let Some(config) = config.filter(|c| {
        stopped
            && c.hooks
                .as_ref()
                .is_none_or(|h| h.poststop().as_ref().is_none_or(Vec::is_empty))
    }) else {
        return container.delete(true);
    };
    for dir in container_cgroup_dirs(cgroup_root, &config.cgroup_path.to_string_lossy()) {
        if !dir.exists() {
            continue;
        }
        // What is left in it (the container shared a pid namespace, or it is being torn
        // down) is killed first, as libcontainer does.
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !remove_cgroup_dir(&dir) {
            return Err(LibcontainerError::OtherIO(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!("cgroup {} still busy", dir.display()),
            )));
        }
    }
    match fs::remove_dir_all(container.root.as_path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LibcontainerError::OtherIO(e)),
    }
}

#[cfg(test)]
mod tests {
    use libcontainer::config::YoukiConfig;

    use super::*;

    #[test]
    fn a_stopped_container_loses_its_state_and_its_cgroup_in_every_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, root, cgroups) = (
            dir.path().join("bundle"),
            dir.path().join("state/c1"),
            dir.path().join("cgroup"),
        );
        for d in [&bundle, &root] {
            fs::create_dir_all(d).unwrap();
        }
        let spec = crate::spec::build_spec(&crate::ContainerConfig {
            id: "c1".into(),
            bundle_dir: bundle.clone(),
            rootfs: "/rootfs".into(),
            args: vec!["true".into()],
            cgroups_path: "/skiff/n/pod/c1".into(),
            ..crate::ContainerConfig::default()
        })
        .unwrap();
        YoukiConfig::from_spec(&spec, "c1")
            .unwrap()
            .save(&root)
            .unwrap();
        // Empty directories stand in for the container's cgroups; a sibling must stay.
        let mine = ["cpu", "memory", "pids"].map(|h| cgroups.join(h).join("skiff/n/pod/c1"));
        let sibling = cgroups.join("cpu/skiff/n/pod/c2");
        for d in mine.iter().chain([&sibling]) {
            fs::create_dir_all(d).unwrap();
        }
        let mut container =
            Container::new("c1", ContainerStatus::Stopped, None, &bundle, &root).unwrap();
        container.save().unwrap();

        remove_state(&mut container, &cgroups).unwrap();

        assert!(!root.exists(), "libcontainer's state is removed");
        for d in &mine {
            assert!(!d.exists(), "{} is removed", d.display());
        }
        assert!(sibling.is_dir(), "another container's cgroup stays");
    }
}
