//! The workload executor libcontainer runs in a container's init: it hands the environment
//! to `execve` instead of rewriting this process's environment with `set_var`, which takes
//! std's environment lock, a lock another daemon thread may have held at the moment the
//! init was cloned from the multi-threaded daemon (the child would then wait forever).

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use libcontainer::{
    oci_spec::runtime::Spec,
    workload::{
        Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
        default::DefaultExecutor,
    },
};

/// Runs the spec's process with `execve` and the environment libcontainer prepared.
#[derive(Clone, Default)]
pub(crate) struct EnvExecutor {
    /// The environment `setup_envs` received (the spec's plus `HOME`), used by `exec`. Only
    /// the container's init touches it, after the clone: the daemon's copy stays empty.
    env: Arc<Mutex<Option<Vec<CString>>>>,
}

impl Executor for EnvExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let process = spec.process().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let args = process
            .args()
            .as_ref()
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let env = self
            .env
            .lock()
            .map_err(|_| ExecutorError::Other("environment lock poisoned".into()))?
            .take()
            .unwrap_or_else(|| env_from(process.env().iter().flatten().cloned()));
        let path_var = env.iter().find_map(|e| {
            e.to_str()
                .ok()
                .and_then(|e| e.strip_prefix("PATH="))
                .map(str::to_owned)
        });
        let program = resolve(&args[0], path_var.as_deref().unwrap_or_default())
            .ok_or_else(|| ExecutorError::Other(format!("executable {:?} not found", args[0])))?;
        let program = CString::new(program.as_os_str().as_encoded_bytes())
            .map_err(|_| ExecutorError::InvalidArg)?;
        let c_args: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;
        let Err(err) = nix::unistd::execve(&program, &c_args, &env);
        Err(ExecutorError::Execution(
            format!("executing {:?}: {err}", args[0]).into(),
        ))
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        let env = env_from(envs.into_iter().map(|(k, v)| format!("{k}={v}")));
        if let Ok(mut slot) = self.env.lock() {
            *slot = Some(env);
        }
        Ok(())
    }
}

fn env_from(vars: impl Iterator<Item = String>) -> Vec<CString> {
    let mut env: Vec<CString> = vars.filter_map(|v| CString::new(v).ok()).collect();
    env.sort();
    env
}

/// Finds `program` as `execvp` would: as given when it holds a slash, else in `path`'s
/// directories, the first regular file with an execute bit.
fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_order_and_slashes_are_taken_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(
            resolve("tool", &path),
            Some(b.join("tool")),
            "a's is not executable"
        );
        assert_eq!(resolve("missing", &path), None);
        assert_eq!(resolve("./x/tool", &path), Some(PathBuf::from("./x/tool")));
    }

    #[test]
    fn environment_is_sorted_and_drops_entries_with_nul() {
        let env = env_from(["B=2".to_owned(), "A=1".to_owned(), "C=\0".to_owned()].into_iter());
        assert_eq!(env, vec![c"A=1".to_owned(), c"B=2".to_owned()]);
    }
}
