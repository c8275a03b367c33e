//! Running commands loudly, so the user always sees what set-up and tests do.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Prints the command, runs it with inherited stdio, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs the command quietly and returns its stdout if it succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the command quietly and fails with its stderr if it fails.
pub fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            display(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_run_fails_with_the_commands_stderr() {
        let err = quiet(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
        quiet(Command::new("sh").args(["-c", "echo fine"])).unwrap();
    }
}
