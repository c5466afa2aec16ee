//! `tsweep`: parses the command line, runs it, and turns any failure into one line
//! `error: <reason>` on stderr and the exit code of its kind (see `cli`).

use std::process::ExitCode;

use clap::Parser;
use tsweep_coordinator::cli::{self, error::one_line, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(cli::error::EXIT_BAD_INPUT)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message is several lines (usage, tips); keep its first line.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("error: {} (see tsweep --help)", one_line(first.trim_start_matches("error: ")));
            return ExitCode::from(cli::error::EXIT_BAD_INPUT);
        }
    };
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}
