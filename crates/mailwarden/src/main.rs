#![forbid(unsafe_code)]

/// mimalloc gives freed memory back to the system: with glibc's allocator the buffers of
/// large messages stayed in its arenas, and RSS under load was several times the live
/// memory (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mailwarden::cli::main()
}
