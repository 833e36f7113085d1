//! The `portcullis` binary: everything lives in the library; this only runs the CLI.

/// mimalloc instead of the system allocator: the proxy allocates and frees buffers and header
/// maps on every request, and glibc malloc was a fifth of the gateway's CPU time under load
/// (`perf`, `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(portcullis::cli::run());
}
