//! The `bootforge` binary: parse the command line, run the command, report errors.
//! All logic lives in the library (`src/lib.rs`).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Log lines go to stderr through a writer thread, so that a slow reader of stderr (a
    // journal under load) never stalls the service's request threads. Lines beyond its queue
    // are dropped rather than waited for; the guard flushes the rest at exit.
    let (stderr, _flush) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOOTFORGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(stderr)
        .with_ansi(colour_on_stderr())
        .init();
    let cli = bootforge::cli::Cli::parse();
    match bootforge::cli::run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            // An input file that cannot be read is told apart from a failed check.
            if e.downcast_ref::<bootforge::cli::tls::UnreadableInput>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether log lines may carry terminal colour codes: only when stderr is a terminal (not a
/// file, a pipe or the journal, where they would be stored as escape bytes) and `NO_COLOR` is
/// unset or empty (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
