//! The `kitt` binary: parse the command line, run it, exit with its code.

use clap::Parser;

fn main() {
    let cli = match kitt::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { kitt::cli::EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(kitt::cli::run(cli));
}
