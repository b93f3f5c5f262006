//! The `switchyard` binary: parses the command line and hands it to
//! [`switchyard::cli::run`].

use std::process::ExitCode;

use clap::Parser;

/// Every Route allocates and frees a few dozen small objects across the
/// runtime's threads and the store's; mimalloc's thread-local free lists keep
/// that off glibc's shared arenas (see docs/benchmarks.md, "Load").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchyard::cli::run(switchyard::cli::args::Cli::parse())
}
