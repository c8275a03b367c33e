//! The official Python `kubernetes` client against the real `control` binary: list, create,
//! patch, label selection, watch, conflict and delete; storage classes, and a claim bound to a
//! volume made beforehand.

use anyhow::Result;
use skiff_tests::{control::ControlPlane, require_program};

#[test]
fn the_python_client_lists_creates_patches_and_watches() -> Result<()> {
    let test = "the_python_client_lists_creates_patches_and_watches";
    if !require_program(test, "python3") {
        return Ok(());
    }
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .status()?
        .success();
    if !has_client {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: the Python kubernetes client is missing; cargo xtask test installs it"
        );
        eprintln!("skipped: {test}: needs `pip install kubernetes`");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/client_roundtrip.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .env("KUBECONFIG", cp.kubeconfig())
        .output()?;
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cp.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
    Ok(())
}
