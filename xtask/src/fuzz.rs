//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` one after another on one core
//! and reports executions, corpus sizes and new crashes. A bench command, never part of CI.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{prereq, shell};

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Minutes per target.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Fuzz only these targets (repeatable); every target in `fuzz/` by default.
    #[arg(long = "target")]
    targets: Vec<String>,
}

/// One target's run.
struct Outcome {
    target: String,
    seconds: f64,
    execs: u64,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

/// The cargo-fuzz flags every build and run shares: no sanitizer (the targets are safe
/// Rust; overflow and bounds checks are what they trip) with debug assertions on.
fn fuzz_cmd(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz"]);
    cmd
}

fn common_flags(cmd: &mut Command, root: &Path) {
    cmd.args(["--sanitizer", "none", "--debug-assertions", "--target-dir"])
        .arg(root.join("target/fuzz/build"));
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    prereq::nightly_with_rust_src()?;
    if shell::output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        eprintln!(
            "xtask: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)"
        );
        shell::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets = if args.targets.is_empty() {
        shell::output(fuzz_cmd(root).arg("list"))
            .context("listing the fuzz targets")?
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        args.targets.clone()
    };
    // `cargo fuzz build` takes one target or none (all of them).
    let builds: Vec<Option<&String>> = if args.targets.is_empty() {
        vec![None]
    } else {
        args.targets.iter().map(Some).collect()
    };
    for target in builds {
        let mut build = fuzz_cmd(root);
        build.arg("build");
        common_flags(&mut build, root);
        shell::run(build.args(target))?;
    }
    let out = root.join("target/fuzz");
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(fuzz_one(root, &out, target, args.minutes)?);
        // Written after every target, so a run cut short still leaves its figures.
        let table = table(&outcomes);
        fs::write(out.join("report.md"), &table).context("writing target/fuzz/report.md")?;
    }
    let table = table(&outcomes);
    println!("{table}");
    eprintln!("xtask: report in {}", out.join("report.md").display());
    let crashes: Vec<_> = outcomes.iter().flat_map(|o| &o.crashes).collect();
    if !crashes.is_empty() {
        bail!("new crashes: {crashes:?}");
    }
    Ok(())
}

fn fuzz_one(root: &Path, out: &Path, target: &str, minutes: u64) -> Result<Outcome> {
    let corpus = root.join("fuzz/corpus").join(target);
    // New inputs land in a scratch corpus; only those that add coverage are merged into
    // the repository's afterwards, which keeps it small.
    let scratch = out.join("corpus").join(target);
    let artifacts = out.join("artifacts").join(target);
    let log = out.join("logs").join(format!("{target}.log"));
    for dir in [&corpus, &scratch, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::create_dir_all(out.join("logs"))?;
    let before = files(&artifacts)?;
    eprintln!(
        "xtask: fuzzing {target} for {minutes} min (log: {})",
        log.display()
    );
    let mut cmd = fuzz_cmd(root);
    cmd.args(["run"]);
    common_flags(&mut cmd, root);
    cmd.arg(target).arg(&scratch).arg(&corpus).arg("--").args([
        format!("-max_total_time={}", minutes * 60),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".to_owned(),
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        "-max_len=8192".to_owned(),
    ]);
    let dict = root.join("fuzz/dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    // libFuzzer's own clock, which leaves out building the target.
    let seconds = fuzzing_seconds(&text).unwrap_or_else(|| started.elapsed().as_secs_f64());
    let execs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let crashes: Vec<PathBuf> = files(&artifacts)?
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !status.success() && crashes.is_empty() {
        eprintln!("xtask: {target} exited with {status} and no artifact; see its log");
    }
    let mut merge = fuzz_cmd(root);
    merge.arg("run");
    common_flags(&mut merge, root);
    merge
        .arg(target)
        .arg(&corpus)
        .arg(&scratch)
        .args(["--", "-merge=1", "-max_len=8192"]);
    shell::quiet(&mut merge).with_context(|| format!("merging the {target} corpus"))?;
    Ok(Outcome {
        target: target.to_owned(),
        seconds,
        execs,
        corpus: files(&corpus)?.len(),
        crashes,
    })
}

/// The seconds libFuzzer says it fuzzed for (`Done N runs in S second(s)`); `None` after a
/// crash, which ends the run without that line.
fn fuzzing_seconds(log: &str) -> Option<f64> {
    log.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("Done ")?;
        let (_, secs) = rest.split_once(" runs in ")?;
        secs.split_whitespace().next()?.parse().ok()
    })
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect())
}

fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| target | minutes | execs | execs/s | corpus files | new crashes |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        #[expect(
            clippy::cast_precision_loss,
            reason = "an exec count far below 2^52 for a rate"
        )]
        let rate = o.execs as f64 / o.seconds.max(1.0);
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {:.0} | {} | {} |",
            o.target,
            o.seconds / 60.0,
            o.execs,
            rate,
            o.corpus,
            o.crashes.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzing_time_is_libfuzzers_own() {
        let log = "#1000 DONE cov: 10\nDone 123456 runs in 601 second(s)\nstat::x: 1\n";
        assert_eq!(fuzzing_seconds(log), Some(601.0));
        assert_eq!(
            fuzzing_seconds("==1== ERROR: libFuzzer: deadly signal\n"),
            None
        );
    }

    #[test]
    fn the_table_has_a_row_per_target_with_its_rate() {
        let t = table(&[Outcome {
            target: "quantity".into(),
            seconds: 120.0,
            execs: 1200,
            corpus: 7,
            crashes: vec![PathBuf::from("crash-1")],
        }]);
        assert!(t.contains("| quantity | 2.0 | 1200 | 10 | 7 | 1 |"), "{t}");
    }
}
