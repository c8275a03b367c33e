//! The libcontainer runtime for real: busybox containers in a network namespace and a
//! cgroup subtree the test made, checked for exit codes, signals, OOM kills, CRI logs,
//! clean deletion and adoption by a second runtime over the same state.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use skiff_node_runtime::{
    ContainerConfig, ContainerRuntime, ExitStatus, Libcontainer, ResourceSpec,
};
use skiff_tests::{
    container::{CGROUP_ROOT, Fixture},
    require_root,
};

const APPLETS: [&str; 7] = ["sh", "echo", "sleep", "cat", "true", "head", "yes"];

/// Container `pod-<name>-0` running `script` in `sh`.
fn script_config(fx: &Fixture, name: &str, script: &str) -> ContainerConfig {
    let id = format!("pod-{name}-0");
    fx.sandbox().config(&id, &["/bin/sh", "-c", script])
}

async fn wait(rt: &Libcontainer, id: &str) -> Result<ExitStatus> {
    tokio::time::timeout(Duration::from_secs(20), rt.wait(id))
        .await
        .context("container did not exit in time")?
        .context("wait")
}

fn log(config: &ContainerConfig) -> String {
    fs::read_to_string(&config.log_path).unwrap_or_default()
}

/// Deletes the container and checks nothing of it is left.
async fn delete_and_check(fx: &Fixture, rt: &Libcontainer, config: &ContainerConfig) -> Result<()> {
    rt.delete(&config.id).await?;
    ensure!(!config.bundle_dir.exists(), "bundle left behind");
    ensure!(
        !rt.state_root().join(&config.id).exists(),
        "libcontainer state left behind"
    );
    for top in fx.sandbox().cgroups().dirs() {
        ensure!(
            !top.join(&config.id).exists(),
            "cgroup {} left behind",
            top.display()
        );
    }
    rt.delete(&config.id)
        .await
        .context("delete is idempotent")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_logs_to_cri_file_exits_zero_and_delete_leaves_nothing() -> Result<()> {
    if !require_root("runtime echo") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let config = script_config(&fx, "echo", "echo hello; echo oops >&2; echo -n tail");
    let started = rt.start(&config).await?;
    ensure!(started.pid > 0);
    let status = wait(&rt, &config.id).await?;
    ensure!(status.code == Some(0), "{status:?}");
    ensure!(!status.oom_killed);
    let text = log(&config);
    ensure!(text.contains(" stdout F hello\n"), "log: {text}");
    ensure!(text.contains(" stderr F oops\n"), "log: {text}");
    ensure!(text.contains(" stdout P tail\n"), "log: {text}");
    // Concurrent waits see the same cached status.
    ensure!(wait(&rt, &config.id).await? == status);
    let listed = rt.list().await?;
    ensure!(
        listed.iter().any(|c| c.id == config.id && !c.running),
        "{listed:?}"
    );
    delete_and_check(&fx, &rt, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported() -> Result<()> {
    if !require_root("runtime exit code") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let config = script_config(&fx, "exit3", "exit 3");
    rt.start(&config).await?;
    let status = wait(&rt, &config.id).await?;
    ensure!(
        status.code == Some(3) && status.signal.is_none(),
        "{status:?}"
    );
    delete_and_check(&fx, &rt, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_a_trapping_init_and_usage_is_read() -> Result<()> {
    if !require_root("runtime sigterm") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    // PID 1 of a PID namespace only receives signals it handles, so the init traps TERM.
    let config = script_config(
        &fx,
        "term",
        "trap 'echo bye; exit 143' TERM; echo up; while :; do sleep 0.1; done",
    );
    rt.start(&config).await?;
    for _ in 0..100 {
        if log(&config).contains("stdout F up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let usage = rt.usage(&config.id).await?;
    ensure!(usage.memory_usage_bytes > 0, "{usage:?}");
    ensure!(usage.cpu_usage_nanos > 0, "{usage:?}");
    let info = rt.list().await?;
    ensure!(
        info.iter().any(|c| c.id == config.id && c.running),
        "{info:?}"
    );
    rt.kill(&config.id, libc::SIGTERM).await?;
    let status = wait(&rt, &config.id).await?;
    ensure!(status.code == Some(143), "{status:?}");
    ensure!(log(&config).contains("stdout F bye"), "{}", log(&config));
    rt.kill(&config.id, libc::SIGTERM)
        .await
        .context("kill after exit is no error")?;
    delete_and_check(&fx, &rt, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_ignoring_sigterm_dies_by_sigkill() -> Result<()> {
    if !require_root("runtime sigkill") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let config = script_config(&fx, "ignore", "trap '' TERM; while :; do sleep 0.1; done");
    rt.start(&config).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.kill(&config.id, libc::SIGTERM).await?;
    let early = tokio::time::timeout(Duration::from_millis(500), rt.wait(&config.id)).await;
    ensure!(early.is_err(), "SIGTERM should be ignored: {early:?}");
    rt.kill(&config.id, libc::SIGKILL).await?;
    let status = wait(&rt, &config.id).await?;
    ensure!(
        status.signal == Some(libc::SIGKILL) && status.code.is_none(),
        "{status:?}"
    );
    ensure!(status.exit_code() == 137);
    ensure!(!status.oom_killed);
    delete_and_check(&fx, &rt, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_exceeded_is_oom_killed() -> Result<()> {
    if !require_root("runtime oom") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let mut config = script_config(&fx, "oom", "x=a; while :; do x=$x$x; done");
    config.resources = ResourceSpec {
        memory_limit: Some(16 << 20),
        ..ResourceSpec::default()
    };
    rt.start(&config).await?;
    let status = wait(&rt, &config.id).await?;
    ensure!(status.oom_killed, "{status:?}");
    delete_and_check(&fx, &rt, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_kills_a_running_container() -> Result<()> {
    if !require_root("runtime delete running") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let config = script_config(&fx, "running", "sleep 1000");
    let started = rt.start(&config).await?;
    delete_and_check(&fx, &rt, &config).await?;
    ensure!(
        !Path::new(&format!("/proc/{}", started.pid)).exists() || {
            let stat =
                fs::read_to_string(format!("/proc/{}/stat", started.pid)).unwrap_or_default();
            stat.contains(") Z ") || stat.is_empty()
        }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_leaves_nothing_behind() -> Result<()> {
    if !require_root("runtime failed start") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let mut config = script_config(&fx, "bad", "true");
    // The init fails joining the namespace, after libcontainer made its processes.
    config.namespaces.net = Some("/run/netns/skt-does-not-exist".into());
    let before = children();
    ensure!(rt.start(&config).await.is_err());
    let left: Vec<i32> = children()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    ensure!(
        left.is_empty(),
        "processes of the failed start left: {left:?}"
    );
    ensure!(!config.bundle_dir.exists(), "bundle left behind");
    ensure!(
        !rt.state_root().join(&config.id).exists(),
        "state left behind"
    );
    ensure!(rt.list().await?.is_empty());
    Ok(())
}

/// Every child process of this test process (running or zombie), from
/// `/proc/self/task/*/children`.
fn children() -> Vec<i32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Set in the copy of this test binary that runs in a mount namespace of its own.
const OWN_MOUNT_NAMESPACE: &str = "SKIFF_TEST_OWN_MOUNT_NAMESPACE";

/// A file system that is neither tmpfs nor cgroup2 over `/sys/fs/cgroup`, which is what a
/// node sees under `ip netns exec` (a fresh `/sys`): libcontainer then fails with "failed to
/// detect cgroup setup". Mounted only in the test's own mount namespace; unmounted on drop.
struct HiddenCgroups;

impl HiddenCgroups {
    fn mount() -> Result<Self> {
        nix::mount::mount(
            Some("skt-no-cgroups"),
            CGROUP_ROOT,
            Some("ramfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting ramfs over the cgroup root")?;
        Ok(Self)
    }
}

impl Drop for HiddenCgroups {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(CGROUP_ROOT, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_failing_to_detect_cgroups_leaves_nothing_and_its_retry_starts() -> Result<()> {
    const TEST: &str = "create_failing_to_detect_cgroups_leaves_nothing_and_its_retry_starts";
    if !require_root(TEST) {
        return Ok(());
    }
    if std::env::var_os(OWN_MOUNT_NAMESPACE).is_none() {
        // Hiding the cgroup root must never reach the host: run this test again in a copy
        // of the binary inside a private mount namespace.
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(std::env::current_exe()?)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(OWN_MOUNT_NAMESPACE, "1")
            .output()
            .context("running unshare")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains("1 passed"),
            "{}\n{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let config = script_config(&fx, "nocgroups", "echo started");
    let hidden = HiddenCgroups::mount()?;
    for attempt in 0..3 {
        let err = rt
            .start(&config)
            .await
            .err()
            .context("start succeeded without a cgroup setup")?;
        ensure!(
            err.to_string().contains("cgroup"),
            "attempt {attempt}: {err}"
        );
        let left = children();
        ensure!(
            left.is_empty(),
            "attempt {attempt}: processes left: {left:?}"
        );
        ensure!(
            !config.bundle_dir.exists(),
            "attempt {attempt}: bundle left"
        );
        ensure!(
            !rt.state_root().join(&config.id).exists(),
            "attempt {attempt}: libcontainer state left"
        );
    }
    // The cause goes away: the same container now starts.
    drop(hidden);
    for top in fx.sandbox().cgroups().dirs() {
        ensure!(
            !top.join(&config.id).exists(),
            "cgroup {} left by the failed creates",
            top.display()
        );
    }
    rt.start(&config).await.context("the retry")?;
    let status = wait(&rt, &config.id).await?;
    ensure!(status.code == Some(0), "{status:?}");
    ensure!(
        log(&config).contains("stdout F started"),
        "{}",
        log(&config)
    );
    delete_and_check(&fx, &rt, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_runtime_adopts_a_running_container_and_keeps_its_log() -> Result<()> {
    if !require_root("runtime adopt") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let config = script_config(
        &fx,
        "adopt",
        "echo before; sleep 1; echo during; sleep 1; echo after",
    );
    let first = fx.runtime();
    first.start(&config).await?;
    for _ in 0..100 {
        if log(&config).contains("stdout F before") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A daemon restart: the first runtime goes away without touching the container.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let second = fx.runtime();
    let listed = second.list().await?;
    let found = listed
        .iter()
        .find(|c| c.id == config.id)
        .context("listed after restart")?;
    ensure!(found.running, "{found:?}");
    ensure!(found.log_path.as_deref() == Some(config.log_path.as_path()));
    let info = second.adopt(&config.id).await?;
    ensure!(info.running && info.pid.is_some(), "{info:?}");
    let status = wait(&second, &config.id).await?;
    // A real restart loses the parent, so the code is unknown; in this single test
    // process the init is still our child and may be reaped with its code.
    ensure!(matches!(status.code, None | Some(0)), "{status:?}");
    let text = log(&config);
    for word in ["before", "during", "after"] {
        ensure!(
            text.contains(&format!("stdout F {word}\n")),
            "{word} missing: {text}"
        );
    }
    delete_and_check(&fx, &second, &config).await
}

/// Reads `output` until it has shown `needle`.
async fn read_until(
    output: &mut skiff_node_runtime::container_exec::ProcessOutput,
    needle: &str,
) -> Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = output.read(&mut buf).await?;
            ensure!(n > 0, "output ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await
    .with_context(|| format!("{needle:?} never came: {}", String::from_utf8_lossy(&seen)))??;
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tty_container_gets_a_terminal_that_outlives_its_runtime() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    if !require_root("runtime tty") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let mut config = script_config(
        &fx,
        "tty",
        "[ -t 0 ] && [ -t 1 ] && echo has-a-tty; while read line; do echo got-$line; done",
    );
    config.tty = true;
    config.stdin = true;
    let first = fx.runtime();
    first.start(&config).await?;
    let terminal = first.terminal(&config.id).context("a terminal")?;
    let mut output = terminal.output().context("terminal output")?;
    let mut input = terminal.terminal().input()?;
    input.write_all(b"one\n").await?;
    read_until(&mut output, "got-one").await?;
    drop((input, output, terminal));
    // A daemon restart: the first runtime and its descriptors of the master go away; the
    // shell is not hung up, and the second runtime takes the terminal from the keeper.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = fx.runtime();
    ensure!(second.adopt(&config.id).await?.running);
    let terminal = second
        .terminal(&config.id)
        .context("the adopted terminal")?;
    let mut output = terminal.output().context("terminal output")?;
    let mut input = terminal.terminal().input()?;
    input.write_all(b"two\n").await?;
    read_until(&mut output, "got-two").await?;
    drop((input, output, terminal));
    second.kill(&config.id, libc::SIGKILL).await?;
    wait(&second, &config.id).await?;
    let text = log(&config);
    for line in ["has-a-tty", "got-one", "got-two"] {
        ensure!(text.contains(&format!("stdout F {line}")), "{line}: {text}");
    }
    delete_and_check(&fx, &second, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tty_start_leaves_no_terminal_behind() -> Result<()> {
    if !require_root("runtime failed tty start") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-rt")?;
    let rt = fx.runtime();
    let mut config = script_config(&fx, "badtty", "true");
    config.tty = true;
    config.stdin = true;
    config.namespaces.net = Some("/run/netns/skt-does-not-exist".into());
    let before = children();
    ensure!(rt.start(&config).await.is_err());
    let left: Vec<i32> = children()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    ensure!(left.is_empty(), "processes (a keeper?) left: {left:?}");
    ensure!(
        !config.bundle_dir.exists(),
        "bundle (and console socket) left"
    );
    ensure!(
        !rt.state_root().join(&config.id).exists(),
        "state left behind"
    );
    ensure!(rt.terminal(&config.id).is_none());
    Ok(())
}
