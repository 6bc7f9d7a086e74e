use clap::Parser;

/// Runs GitLab CI jobs as hardened Kubernetes pods.
#[derive(Debug, Parser)]
#[command(name = "keyhole-runner", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
