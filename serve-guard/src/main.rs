#![forbid(unsafe_code)]

/// mimalloc rather than the C library's allocator: the proxy allocates a little for every
/// request, and the packaged static binary would otherwise get musl's allocator, which is built
/// for size, not speed (issue 11's profile: malloc and free were an eighth of every request).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    serve_guard::cli::main()
}
