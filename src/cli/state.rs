//! `bootforge state …` and `bootforge audit export`: moving the service's state between the old
//! files and databases, and reading its audit log out for log shippers.

use crate::serve::store::Store;
use std::io::Write;
use std::path::PathBuf;

const STATE_HELP: &str = "\
Examples:
  # Move an old state folder (hosts/*.json, audit.jsonl) into its SQLite database. `serve` does
  # this by itself on its first start; this command does it ahead of time, and says what moved.
  bootforge state import --state-dir /var/lib/bootforge

  # A site that outgrows one machine: copy SQLite into a new, empty PostgreSQL database, then
  # start the replicas with --database postgres://… (see docs/REPLICAS.md).
  bootforge state copy --from sqlite:///var/lib/bootforge/state.db \\
                       --to postgres://bootforge@db.example/bootforge

Stop `bootforge serve` first: a SQLite database serves one process at a time, and a copy made
while the service writes would miss what it writes meanwhile. Passwords in URLs are never
printed; prefer BOOTFORGE_DATABASE_FROM / BOOTFORGE_DATABASE_TO over the command line.";

/// Move the service's state into a database: import old files, or copy between databases.
#[derive(clap::Args, Debug)]
#[command(after_help = STATE_HELP)]
pub struct StateArgs {
    #[command(subcommand)]
    pub action: StateAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum StateAction {
    /// Import an old state folder (hosts/*.json, audit.jsonl) into a database, in one
    /// transaction; the old files are then renamed aside (hosts.imported/, audit.jsonl.imported).
    Import {
        /// The old state folder (what `serve --state-dir` was).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The database to import into. Default: SQLite in the state folder (state.db).
        #[arg(long, value_name = "URL", env = "BOOTFORGE_DATABASE", hide_env_values = true)]
        database: Option<String>,
    },
    /// Copy every host state, audit record and last boot from one database into a new, empty
    /// one (in one transaction on the target).
    Copy {
        /// The database to read (it is not changed).
        #[arg(long, value_name = "URL", env = "BOOTFORGE_DATABASE_FROM", hide_env_values = true)]
        from: String,
        /// The database to fill: it must hold no host and no record yet.
        #[arg(long, value_name = "URL", env = "BOOTFORGE_DATABASE_TO", hide_env_values = true)]
        to: String,
    },
}

pub fn state(args: StateArgs) -> anyhow::Result<()> {
    match args.action {
        StateAction::Import { state_dir, database } => {
            let url = database.unwrap_or_else(|| Store::default_url(&state_dir));
            let store = Store::connect(&url)?;
            let moved = crate::serve::store::import::import(&store, &state_dir)?;
            println!(
                "imported {} into {}: {moved}; the old files are kept as hosts.imported/ and audit.jsonl.imported",
                state_dir.display(),
                store.shown()
            );
        }
        StateAction::Copy { from, to } => {
            let source = Store::open_reader(&from)?;
            let target = Store::connect(&to)?;
            let bar = indicatif::ProgressBar::new_spinner().with_message("audit records copied");
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {pos} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            let moved =
                crate::serve::store::import::copy(&source, &target, |n| bar.set_position(n));
            bar.finish_and_clear();
            let moved = moved?;
            println!("copied {} into {}: {moved}", source.shown(), target.shown());
        }
    }
    Ok(())
}

const AUDIT_HELP: &str = "\
The records are written one JSON object per line, as the old audit.jsonl had them, oldest
first; each line is a whole record. Log shippers that tailed audit.jsonl can follow this instead:

  bootforge audit export --state-dir /var/lib/bootforge --follow | vector …
  bootforge audit export --database postgres://reader@db/bootforge --since 120000

`--since` takes the `next` an earlier run printed on stderr (or an `offset` from GET /events),
so a shipper can resume where it stopped. Reading works next to a running `serve`.";

/// Read the service's audit log out of its database.
#[derive(clap::Args, Debug)]
#[command(after_help = AUDIT_HELP)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: AuditAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditAction {
    /// Write audit records as JSON lines to stdout.
    Export {
        /// The service's state folder (its SQLite database, state.db).
        #[arg(long, value_name = "DIR", required_unless_present = "database")]
        state_dir: Option<PathBuf>,
        /// The database, when it is not SQLite in the state folder.
        #[arg(long, value_name = "URL", env = "BOOTFORGE_DATABASE", hide_env_values = true)]
        database: Option<String>,
        /// Start at this cursor (a record's `offset`, or the `next` of an earlier export).
        #[arg(long, value_name = "CURSOR", default_value_t = 0)]
        since: u64,
        /// Keep running, writing new records as they are stored (checked every second).
        #[arg(long)]
        follow: bool,
    },
}

pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let AuditAction::Export { state_dir, database, since, follow } = args.action;
    let url = match (database, state_dir) {
        (Some(url), _) => url,
        (None, Some(dir)) => Store::default_url(&dir),
        (None, None) => anyhow::bail!("give --state-dir or --database"),
    };
    let store = Store::open_reader(&url)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut cursor = since;
    loop {
        let (lines, next) = crate::serve::store::audit::export(&store, cursor, 5000)?;
        for line in &lines {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        cursor = next;
        if lines.len() >= 5000 {
            continue;
        }
        if !follow {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    eprintln!("next: {cursor}");
    Ok(())
}
