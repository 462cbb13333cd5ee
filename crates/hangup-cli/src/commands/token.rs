//! `hangup token`: the token a device sends in `HELLO … token=`.

use std::process::ExitCode;

use crate::args::TokenArgs;

pub fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    if !hangup_core::valid_device_id(&args.device) {
        anyhow::bail!(
            "`{}` is not a device id: use 1-128 characters of A-Za-z0-9._:-",
            args.device
        );
    }
    let secret = super::read_secret(&args.auth_secret)?;
    println!(
        "{}",
        hangup_core::device_token(secret.as_bytes(), &args.device)
    );
    Ok(ExitCode::SUCCESS)
}
