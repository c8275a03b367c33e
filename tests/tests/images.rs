//! The node's image store against real things: tarball imports, pulls from Debian's
//! `docker-registry` (open and behind basic auth), overlayfs root filesystems with real
//! whiteouts, and garbage collection.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
};

use skiff_node_runtime::image::{ImageStore, PullError, PullPolicy, Registries, RegistryAuth};
use skiff_tests::{
    image::{add_file, busybox_docker_archive, busybox_layer, busybox_oci_layout, digest},
    registry::Registry,
    require_program, require_root,
};

/// Unmounts a root filesystem a test mounted, even when the test fails midway.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn has_busybox(test: &str) -> bool {
    if Path::new(skiff_tests::image::BUSYBOX).is_file() {
        return true;
    }
    eprintln!("skipped: {test}: needs /bin/busybox (Debian busybox-static)");
    false
}

fn can_pull(test: &str) -> bool {
    has_busybox(test) && require_program(test, "docker-registry") && require_program(test, "skopeo")
}

/// Pushes the busybox image to `registry` as `<repo>:1`, built under `dir`; returns its
/// reference there.
fn push_busybox(registry: &Registry, dir: &Path, repo: &str) -> String {
    let tar = busybox_oci_layout(dir, "busybox:1").expect("building the busybox image");
    registry
        .push(&tar, &format!("{repo}:1"))
        .expect("pushing to the test registry");
    format!("{}/{repo}:1", registry.host())
}

#[test]
fn imported_images_are_found_by_reference_and_by_id() {
    if !has_busybox("imported_images_are_found_by_reference_and_by_id") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(&dir.path().join("images"), Vec::new()).unwrap();

    let oci = busybox_oci_layout(dir.path(), "example.test/skiff/busybox:1").unwrap();
    let imported = images.import(&oci).unwrap();
    assert_eq!(imported.len(), 1);
    let image = images.lookup("example.test/skiff/busybox:1").unwrap();
    assert_eq!(image.reference, "example.test/skiff/busybox:1");
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.env[0].starts_with("PATH="));
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert_eq!(images.lookup(&image.id).unwrap().id, image.id);

    let docker = busybox_docker_archive(dir.path(), "busybox:test").unwrap();
    images.import(&docker).unwrap();
    let from_docker = images.lookup("docker.io/library/busybox:test").unwrap();
    // Same layer and config: the layer is shared, not unpacked twice.
    assert_eq!(from_docker.id, image.id);
    assert_eq!(from_docker.layers, image.layers);
    assert_eq!(images.list().len(), 2);
}

#[tokio::test]
async fn pull_if_not_present_pulls_once_and_records_the_repo_digest() {
    let test = "pull_if_not_present_pulls_once_and_records_the_repo_digest";
    if !can_pull(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let reference = push_busybox(&registry, dir.path(), "skiff/busybox");

    let images = ImageStore::open(&dir.path().join("images"), vec![registry.host()]).unwrap();
    let gets_before = registry.manifest_gets();
    // Two at once: one pull, both get the image.
    let (a, b) = tokio::join!(
        images.ensure(&reference, PullPolicy::IfNotPresent, &[]),
        images.ensure(&reference, PullPolicy::IfNotPresent, &[]),
    );
    let image = a.unwrap();
    assert_eq!(b.unwrap().id, image.id);
    assert_eq!(
        registry.manifest_gets() - gets_before,
        1,
        "{}",
        registry.log()
    );
    assert_eq!(image.reference, reference);
    let repo_digest = image.repo_digest.clone().unwrap();
    assert!(
        repo_digest.starts_with(&format!("{}/skiff/busybox@sha256:", registry.host())),
        "{repo_digest}"
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert_eq!(image.config.cmd, ["sh"]);

    // With the registry gone, IfNotPresent still answers from the store, Always cannot.
    drop(registry);
    let again = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(again, image);
    let always = images.ensure(&reference, PullPolicy::Always, &[]).await;
    assert!(matches!(always, Err(PullError::Registry(_))), "{always:?}");
}

#[tokio::test]
async fn never_policy_without_the_image_is_not_present() {
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(dir.path(), Vec::new()).unwrap();
    let err = images
        .ensure("127.0.0.1:1/nothing:1", PullPolicy::Never, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotPresent(_)), "{err}");
}

#[tokio::test]
async fn missing_tag_fails_with_the_registrys_reason() {
    let test = "missing_tag_fails_with_the_registrys_reason";
    if !can_pull(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    push_busybox(&registry, dir.path(), "skiff/busybox");
    let images = ImageStore::open(dir.path(), vec![registry.host()]).unwrap();
    let err = images
        .ensure(
            &format!("{}/skiff/busybox:nope", registry.host()),
            PullPolicy::IfNotPresent,
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err}");
    assert!(err.to_string().contains("manifest unknown"), "{err}");
}

#[tokio::test]
async fn registry_with_auth_refuses_anonymous_pulls_and_accepts_the_pull_secret() {
    let test = "registry_with_auth_refuses_anonymous_pulls_and_accepts_the_pull_secret";
    if !can_pull(test) {
        return;
    }
    if let Err(error) = skiff_tests::registry::bcrypt("x") {
        eprintln!("skipped: {test}: {error}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_auth("skt-user", "skt-pass").unwrap();
    let reference = push_busybox(&registry, dir.path(), "private/busybox");
    let images = ImageStore::open(dir.path(), vec![registry.host()]).unwrap();

    let err = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");

    let secret = format!(
        r#"{{"auths":{{"{}":{{"username":"skt-user","password":"skt-pass"}}}}}}"#,
        registry.host()
    );
    let auths = RegistryAuth::from_docker_config_json(secret.as_bytes()).unwrap();
    let image = images
        .ensure(&reference, PullPolicy::IfNotPresent, &auths)
        .await
        .unwrap();
    assert!(image.layers[0].join("bin/busybox").is_file());
}

#[test]
fn rootfs_is_an_overlay_whose_writes_land_in_the_container_layer() {
    let test = "rootfs_is_an_overlay_whose_writes_land_in_the_container_layer";
    if !require_root(test) || !has_busybox(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(&dir.path().join("images"), Vec::new()).unwrap();
    let tar = busybox_oci_layout(dir.path(), "example.test/busybox:1").unwrap();
    let image = images.import(&tar).unwrap().remove(0);
    let container = dir.path().join("containers/skt-c1");

    let rootfs = images.mount_rootfs(&image, &container).unwrap();
    let _guard = MountGuard(rootfs.clone());
    assert_eq!(rootfs, container.canonicalize().unwrap().join("rootfs"));
    assert_eq!(images.mount_rootfs(&image, &container).unwrap(), rootfs);
    let out = Command::new(rootfs.join("bin/busybox"))
        .args(["echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hello\n");

    std::fs::write(rootfs.join("tmp/written"), b"x").unwrap();
    std::fs::remove_file(rootfs.join("bin/wget")).unwrap();
    assert!(container.join("upper/tmp/written").is_file());
    assert!(!image.layers[0].join("tmp/written").exists());
    assert!(image.layers[0].join("bin/wget").is_symlink());

    images.unmount_rootfs(&container).unwrap();
    images.unmount_rootfs(&container).unwrap();
    assert!(!container.join("rootfs").exists());
    assert!(!container.join("upper").exists());
    assert!(!container.join("work").exists());
    assert!(image.layers[0].join("bin/busybox").is_file());
}

/// A docker-archive with busybox below and, above it, a layer deleting `/bin/wget` and
/// making `/etc` opaque with only `hostname` in it.
fn whiteout_archive(dir: &Path) -> PathBuf {
    let bottom = busybox_layer().expect("building the test archive");
    let mut top = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("bin/.wh.wget", &b""[..]),
        ("etc/.wh..wh..opq", b""),
        ("etc/hostname", b"skt\n"),
    ] {
        add_file(&mut top, path, data).expect("building the test archive");
    }
    let top = top.into_inner().expect("building the test archive");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [
            digest(&bottom), digest(&top)]}
    }))
    .expect("JSON encodes");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": ["example.test/whiteouts:1"],
        "Layers": ["bottom/layer.tar", "top/layer.tar"]
    }]))
    .expect("JSON encodes");
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json", &manifest),
        ("config.json", &config),
        ("bottom/layer.tar", &bottom),
        ("top/layer.tar", &top),
    ] {
        add_file(&mut b, path, data).expect("building the test archive");
    }
    let path = dir.join("whiteouts.tar");
    std::fs::write(&path, b.into_inner().expect("building the test archive"))
        .expect("building the test archive");
    path
}

#[test]
fn whiteouts_hide_files_and_opaque_directories_of_lower_layers() {
    let test = "whiteouts_hide_files_and_opaque_directories_of_lower_layers";
    if !require_root(test) || !has_busybox(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(&dir.path().join("images"), Vec::new()).unwrap();
    let image = images
        .import(&whiteout_archive(dir.path()))
        .unwrap()
        .remove(0);
    assert_eq!(image.layers.len(), 2);
    let container = dir.path().join("skt-c2");
    let rootfs = images.mount_rootfs(&image, &container).unwrap();
    let _guard = MountGuard(rootfs.clone());

    assert!(rootfs.join("bin/busybox").is_file());
    assert!(!rootfs.join("bin/wget").exists());
    assert!(rootfs.join("bin/nc").exists());
    assert_eq!(
        std::fs::read(rootfs.join("etc/hostname")).unwrap(),
        b"skt\n"
    );
    assert!(!rootfs.join("etc/passwd").exists());
    images.unmount_rootfs(&container).unwrap();
}

#[test]
fn gc_removes_unused_images_and_keeps_used_ones() {
    if !has_busybox("gc_removes_unused_images_and_keeps_used_ones") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(&dir.path().join("images"), Vec::new()).unwrap();
    let tar = busybox_oci_layout(dir.path(), "example.test/busybox:1").unwrap();
    let image = images.import(&tar).unwrap().remove(0);

    let in_use: HashSet<String> = [image.id.clone()].into();
    assert!(images.gc(&in_use).unwrap().is_empty());
    assert!(images.lookup("example.test/busybox:1").is_some());
    assert!(image.layers[0].is_dir());

    assert_eq!(
        images.gc(&HashSet::new()).unwrap(),
        std::slice::from_ref(&image.id)
    );
    assert!(images.lookup("example.test/busybox:1").is_none());
    assert!(!image.layers[0].exists());
    let blobs = std::fs::read_dir(dir.path().join("images/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
}

#[tokio::test]
async fn a_docker_hub_name_is_pulled_through_the_first_mirror_that_answers() {
    let test = "a_docker_hub_name_is_pulled_through_the_first_mirror_that_answers";
    if !can_pull(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = Registry::start_with_auth("mirror-user", "mirror-pw").unwrap();
    push_busybox(&mirror, dir.path(), "library/busybox");
    // A port nothing listens on: the first mirror is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "mirrors:\n  docker.io:\n    endpoint:\n      - http://127.0.0.1:{dead}\n      - http://{host}\nconfigs:\n  {host}:\n    auth: {{username: mirror-user, password: mirror-pw}}\n",
        host = mirror.host()
    );
    // Mirrors only: the test must never reach Docker Hub, whatever fails.
    let registries = Registries::from_yaml(&config, Vec::new())
        .unwrap()
        .mirrors_only();
    let images = ImageStore::open(&dir.path().join("images"), registries).unwrap();
    let image = images
        .ensure("busybox:1", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(image.reference, "docker.io/library/busybox:1");
    let repo_digest = image.repo_digest.clone().unwrap();
    assert!(
        repo_digest.starts_with("docker.io/library/busybox@sha256:"),
        "{repo_digest}"
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert_eq!(mirror.manifest_gets(), 1, "{}", mirror.log());
    // Found by the name the pod spec uses.
    assert_eq!(images.lookup("busybox:1").unwrap().id, image.id);

    // Without the mirror's credentials, the pull fails and says why for each endpoint.
    let no_auth = format!(
        "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:{dead}\", \"http://{}\"]\n",
        mirror.host()
    );
    let registries = Registries::from_yaml(&no_auth, Vec::new())
        .unwrap()
        .mirrors_only();
    let fresh = ImageStore::open(&dir.path().join("images-2"), registries).unwrap();
    let err = fresh
        .ensure("busybox:1", PullPolicy::Always, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{dead}:")) && err.contains(&mirror.host()),
        "{err}"
    );
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
}
