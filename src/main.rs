fn main() -> std::process::ExitCode {
    asap_proxy::cli::main()
}
