//! `hull`: one binary, one subcommand per role (see ../shared/DESIGN.md).
//!
//! This file only parses the command line and dispatches; each role lives in its
//! crate (`runtime/`, `cni/`, `control/`, ...) and its command-line glue in `cli/`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.log_level.as_deref());
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hull: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
