//! `runtime::container_exec` against a real busybox container started by the libcontainer
//! runtime: exit codes, stdin, split stdout/stderr, extra environment, a TTY, and a probe
//! killed at its timeout. Needs root.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use skiff_node_runtime::{
    ContainerConfig, ContainerRuntime,
    container_exec::{ExecError, ExecIo, exec, exec_status},
};
use skiff_tests::{container::Fixture, require_root, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APPLETS: [&str; 4] = ["sh", "echo", "sleep", "cat"];

/// A container sleeping for a minute in `/tmp`, with one variable set by its spec.
fn sleeping_config(fx: &Fixture, id: &str) -> ContainerConfig {
    ContainerConfig {
        env: vec!["PATH=/bin".into(), "FROM_SPEC=spec".into()],
        cwd: "/tmp".into(),
        ..fx.sandbox().config(id, &["/bin/sleep", "60"])
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

async fn read_all(
    out: Option<skiff_node_runtime::container_exec::ProcessOutput>,
) -> Result<String> {
    let mut text = String::new();
    out.context("no output stream")?
        .read_to_string(&mut text)
        .await?;
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_in_a_running_container_with_its_streams_and_exit_codes() -> Result<()> {
    if !require_root("container exec") {
        return Ok(());
    }
    let fx = Fixture::new(&APPLETS, "skt-ex")?;
    let rt = fx.runtime();
    let config = sleeping_config(&fx, &unique_name("skt-exec"));
    rt.start(&config).await?;
    let result = checks(&fx.state_root(), &config.id).await;
    rt.kill(&config.id, libc::SIGKILL).await?;
    // A failed exec must not leave a zombie in the container's PID namespace, which would
    // keep its init from ever finishing its exit.
    let exited = tokio::time::timeout(Duration::from_secs(5), rt.wait(&config.id)).await;
    rt.delete(&config.id).await?;
    result?;
    ensure!(
        matches!(exited, Ok(Ok(_))),
        "container did not exit after SIGKILL: {exited:?}"
    );
    Ok(())
}

async fn checks(state: &Path, id: &str) -> Result<()> {
    let second = Duration::from_secs(10);
    let code = exec_status(state, id, &argv(&["sh", "-c", "exit 7"]), second).await?;
    ensure!(code == 7, "exit code {code}");

    // The container's working directory and environment, plus the exec's own.
    let mut p = exec(
        state,
        id,
        &argv(&[
            "sh",
            "-c",
            "echo $PWD $FROM_SPEC $EXTRA; echo oops >&2; exit 2",
        ]),
        ExecIo {
            env: vec!["EXTRA=extra".into()],
            ..ExecIo::default()
        },
    )
    .await?;
    let (out, err) = (p.stdout.take(), p.stderr.take());
    let (out, err) = tokio::try_join!(read_all(out), read_all(err))?;
    ensure!(out == "/tmp spec extra\n", "stdout {out:?}");
    ensure!(err == "oops\n", "stderr {err:?}");
    let code = p.wait().await?;
    ensure!(code == 2, "exit code {code}");

    let mut cat = exec(
        state,
        id,
        &argv(&["cat"]),
        ExecIo {
            stdin: true,
            ..ExecIo::default()
        },
    )
    .await?;
    let mut stdin = cat.stdin.take().context("stdin")?;
    stdin.write_all(b"through stdin\n").await?;
    stdin.shutdown().await?;
    drop(stdin);
    let echoed = read_all(cat.stdout.take()).await?;
    ensure!(echoed == "through stdin\n", "cat {echoed:?}");
    ensure!(cat.wait().await? == 0);

    let mut tty = exec(
        state,
        id,
        &argv(&[
            "sh",
            "-c",
            "test -t 0 && test -t 2 && echo is-a-tty; echo to-stderr >&2",
        ]),
        ExecIo {
            tty: true,
            ..ExecIo::default()
        },
    )
    .await?;
    ensure!(tty.stderr.is_none());
    let mut seen = Vec::new();
    let mut out = tty.stdout.take().context("tty output")?;
    let mut buf = [0; 1024];
    // The master reports EIO once the last slave closes: the end of the output.
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    ensure!(seen.contains("is-a-tty"), "tty output {seen:?}");
    ensure!(seen.contains("to-stderr"), "tty output {seen:?}");
    ensure!(tty.wait().await? == 0);

    let started = std::time::Instant::now();
    let timed_out = exec_status(
        state,
        id,
        &argv(&["sleep", "30"]),
        Duration::from_millis(300),
    )
    .await;
    ensure!(
        matches!(timed_out, Err(ExecError::Timeout(_))),
        "{timed_out:?}"
    );
    ensure!(started.elapsed() < Duration::from_secs(5));

    // Concurrent execs each get their own process, streams and exit code.
    let many = futures::future::join_all((0..4).map(|i| {
        let cmd = argv(&["sh", "-c", &format!("exit {}", 10 + i)]);
        async move { exec_status(state, id, &cmd, second).await }
    }))
    .await;
    let codes: Vec<i32> = many.into_iter().collect::<Result<_, _>>()?;
    ensure!(codes == [10, 11, 12, 13], "{codes:?}");

    let missing = exec_status(state, id, &argv(&["/bin/nope"]), second).await;
    ensure!(
        matches!(missing, Err(ExecError::Start { .. })) || missing.as_ref().is_ok_and(|c| *c != 0),
        "{missing:?}"
    );
    Ok(())
}
