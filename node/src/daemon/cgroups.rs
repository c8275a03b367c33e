//! The cgroup directories the node makes above its containers' own (libcontainer removes
//! those): one per pod, and the node's parent, removed in every hierarchy once empty.

use std::path::PathBuf;

/// Mount points of the cgroup hierarchies (v1 controllers and the v2 unified one).
fn cgroup_mounts() -> Vec<PathBuf> {
    mount_points(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default())
}

/// The cgroup and cgroup2 mount points in `/proc/self/mounts` text.
fn mount_points(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2"))
                .then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

/// Removes the node's own cgroup directories (`/skiff/<node>`, then `/skiff`) in every
/// hierarchy, each only when empty: what a node stopping with `--cleanup-on-exit` made.
pub fn remove_node_cgroups(parent: &str) {
    let levels: Vec<&str> = parent
        .trim_start_matches('/')
        .split('/')
        .filter(|l| !l.is_empty())
        .collect();
    for root in cgroup_mounts() {
        for depth in (1..=levels.len()).rev() {
            let dir = levels[..depth].iter().fold(root.clone(), |d, l| d.join(l));
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => break,
                _ => {}
            }
        }
    }
}

/// Removes the pod's own cgroup directory (`<parent>/pod<uid>`) in every hierarchy once
/// its containers' directories are gone; a directory still holding one stays.
pub fn remove_pod_cgroups(parent: &str, uid: &str) {
    for root in cgroup_mounts() {
        let dir = root
            .join(parent.trim_start_matches('/'))
            .join(format!("pod{uid}"));
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), %e, "pod cgroup not removed");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroup_hierarchies_count_as_mount_points() {
        let mounts = "proc /proc proc rw 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
            tmpfs /sys/fs/cgroup tmpfs ro 0 0\n";
        assert_eq!(
            mount_points(mounts),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }
}
