//! The skiff command-line client.

use clap::Parser;
use skiff_control::ctl::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Like every Unix CLI, end quietly when the reader of stdout goes away (`ctl get | head`).
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(err) = run(Cli::parse()).await {
        let text = format!("{err:#}");
        if text.starts_with("Error from server") {
            eprintln!("{text}");
        } else {
            eprintln!("error: {text}");
        }
        std::process::exit(1);
    }
}
