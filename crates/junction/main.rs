//! The `junction` command line. See `junction --help`.

fn main() -> std::process::ExitCode {
    junction::cli::main()
}
