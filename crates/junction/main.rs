//! The `junction` command line. See `junction --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    junction::cli::main()
}
