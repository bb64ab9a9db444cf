//! `mesh-agent`: see [`mesh_agent::cli`].
fn main() -> std::process::ExitCode {
    mesh_agent::cli::main()
}
