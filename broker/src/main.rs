use clap::Parser;

/// Delivers a job's secrets as files and masks them out of its log.
#[derive(Debug, Parser)]
#[command(name = "keyhole-broker", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
