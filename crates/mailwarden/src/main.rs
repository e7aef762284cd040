#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mailwarden::cli::main()
}
