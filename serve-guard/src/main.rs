fn main() -> std::process::ExitCode {
    serve_guard::cli::main()
}
